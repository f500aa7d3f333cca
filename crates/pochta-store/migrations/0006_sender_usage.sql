-- Per-sender sending limits count an authenticated user's envelopes of the last hour and day
-- (across every ingress replica): this index makes that a short range scan.
CREATE INDEX envelopes_auth_user_idx ON envelopes (auth_user, arrived_at)
    WHERE auth_user IS NOT NULL;
