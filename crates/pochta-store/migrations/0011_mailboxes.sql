-- IMAP mailboxes (RFC 9051 2.3, 5.1). Every account has INBOX, which is also what POP3 sees;
-- IMAP clients add folders beside it. A maildrop entry is one message in one mailbox: a copy
-- to another mailbox is another entry over the same content.

-- UIDVALIDITY comes from one sequence, so a mailbox deleted and made again under its name
-- never repeats the value its old UIDs were valid under (RFC 9051 2.3.1.1).
CREATE SEQUENCE mailbox_uid_validity_seq MINVALUE 1 MAXVALUE 4294967295;

-- uid_next: the UID the next message put here gets (taken under this row's lock, so UIDs rise
-- in commit order). highest_modseq: RFC 7162 3.1.1, raised by every change in the mailbox.
-- Names are as the client gave them (hierarchy delimiter '/'), except INBOX, always 'INBOX'.
CREATE TABLE mailboxes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (name <> ''),
    special_use     text CHECK (special_use IN ('\Sent', '\Drafts', '\Trash', '\Junk', '\Archive')),
    uid_validity    bigint NOT NULL DEFAULT nextval('mailbox_uid_validity_seq'),
    uid_next        bigint NOT NULL DEFAULT 1 CHECK (uid_next BETWEEN 1 AND 4294967296),
    highest_modseq  bigint NOT NULL DEFAULT 1 CHECK (highest_modseq >= 1),
    subscribed      boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);

-- Every existing account's INBOX, holding its maildrop; UIDs in delivery order.
INSERT INTO mailboxes (account_id, name, uid_next)
SELECT a.id, 'INBOX', 1 + (SELECT count(*) FROM maildrop_entries e WHERE e.account_id = a.id)
FROM accounts a ORDER BY a.id;

-- imap_uid: the entry's UID in its mailbox (RFC 9051 2.3.1.1); the POP3 UIDL (uid) is kept
-- as it was. flags: system flags (\Seen, \Answered, \Flagged, \Deleted, \Draft) and keywords.
-- modseq: RFC 7162, the mailbox's highest_modseq when the entry last changed.
ALTER TABLE maildrop_entries
    ADD COLUMN mailbox_id bigint REFERENCES mailboxes (id) ON DELETE CASCADE,
    ADD COLUMN imap_uid bigint CHECK (imap_uid BETWEEN 1 AND 4294967295),
    ADD COLUMN flags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN modseq bigint NOT NULL DEFAULT 1;

UPDATE maildrop_entries e SET mailbox_id = m.id, imap_uid = n.place
FROM (SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY id) AS place
      FROM maildrop_entries) n,
     mailboxes m
WHERE n.id = e.id AND m.account_id = e.account_id AND m.name = 'INBOX';

ALTER TABLE maildrop_entries
    ALTER COLUMN mailbox_id SET NOT NULL,
    ALTER COLUMN imap_uid SET NOT NULL;
-- A mailbox's messages in UID order: POP3's listing (INBOX), IMAP's SELECT and UID ranges.
CREATE UNIQUE INDEX maildrop_entries_mailbox_uid_key ON maildrop_entries (mailbox_id, imap_uid);
