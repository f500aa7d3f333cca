-- Quotas (RFC 3463 X.2.2 "mailbox full"): the octets of each maildrop, exactly what POP3 STAT
-- reports (the sum of its entries' pop3_size), kept by local delivery and POP3 deletion in the
-- statements that add and remove entries, so neither RCPT nor delivery sums a maildrop.
ALTER TABLE accounts ADD COLUMN used_bytes bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0);

UPDATE accounts a SET used_bytes = u.bytes
FROM (SELECT account_id, sum(pop3_size) AS bytes FROM maildrop_entries GROUP BY account_id) u
WHERE a.id = u.account_id;
