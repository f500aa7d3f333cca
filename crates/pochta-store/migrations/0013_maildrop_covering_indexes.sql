-- Whole-maildrop reads served by index-only scans. On a store that has grown for a while, one
-- account's entries lie scattered through the heap among everyone else's (50,000 entries on
-- ~29,000 pages in the scale benchmark's interleaved store), so reading them row by row costs
-- a page each. Both indexes below carry what those reads need, and replace the ones they
-- cover (so a delivery updates as many indexes as before):
--   * POP3's listing at login (and IMAP's UID order): a mailbox's entries in UID order with
--     the entry id, its size and its UIDL;
--   * the size sum a quota check reads at RCPT and at delivery, and the accounts listing.
-- Building them locks maildrop_entries against writes for a few seconds per million entries
-- (README, upgrading).
CREATE UNIQUE INDEX maildrop_entries_mailbox_uid_listing
    ON maildrop_entries (mailbox_id, imap_uid) INCLUDE (id, pop3_size, uid);
DROP INDEX maildrop_entries_mailbox_uid_key;
ALTER INDEX maildrop_entries_mailbox_uid_listing RENAME TO maildrop_entries_mailbox_uid_key;

CREATE INDEX maildrop_entries_account_sizes ON maildrop_entries (account_id, id) INCLUDE (pop3_size);
DROP INDEX maildrop_entries_account_idx;
ALTER INDEX maildrop_entries_account_sizes RENAME TO maildrop_entries_account_idx;
