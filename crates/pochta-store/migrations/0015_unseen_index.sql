-- The unseen messages of each mailbox, in UID order: SEARCH UNSEEN (and any search that
-- requires it) reads these entries instead of every entry of the mailbox, which in a large
-- mailbox of mostly read mail is most of the cost (4.6 ms -> 0.14 ms for 10 unseen among
-- 10,000). The predicate makes flag changes update the table's indexes (no HOT update): about
-- a sixth more PostgreSQL CPU per flag change, measured (BENCHMARKS.md, twentieth session).
-- The store writes the \Seen key as this literal so the planner can match the predicate.
-- Building it locks maildrop_entries against writes for a few seconds per million entries
-- (README, upgrading).
CREATE INDEX maildrop_entries_unseen ON maildrop_entries (mailbox_id, imap_uid)
    WHERE NOT ('\Seen' = ANY (flags));
