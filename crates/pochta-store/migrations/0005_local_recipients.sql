-- Which delivery loops claim a recipient: local ones (maildrops here) or remote ones (SMTP to
-- other servers), so that a slow or hostile remote server never holds up local delivery.
-- Decided when the mail is accepted, from the domain's role then; a recipient whose domain has
-- since stopped being local is handed to the remote loops at its next attempt.
ALTER TABLE recipients ADD COLUMN local boolean NOT NULL DEFAULT false;

UPDATE recipients r SET local = true
FROM domains d
WHERE d.name = r.domain AND d.role = 'local' AND r.state IN ('queued', 'held');

-- One claim index per kind of loop: each scans only its own due rows.
DROP INDEX recipients_due_idx;
CREATE INDEX recipients_due_local_idx ON recipients (next_attempt_at)
    WHERE state = 'queued' AND local;
CREATE INDEX recipients_due_remote_idx ON recipients (next_attempt_at)
    WHERE state = 'queued' AND NOT local;
