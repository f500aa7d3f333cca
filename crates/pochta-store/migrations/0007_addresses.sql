-- Addresses beyond accounts: aliases, each local domain's postmaster, catch-all and domain
-- aliases. How an address is resolved: Store::resolve_recipient.

-- postmaster: where postmaster@ and abuse@ of the domain go when no account or alias has that
-- name (RFC 5321 4.5.1, RFC 2142). catch_all: where an address of the domain that matches
-- nothing else goes (off when NULL). alias_of: every address of this domain is the same local
-- part at that domain (a domain alias); such a domain has no accounts or aliases of its own.
ALTER TABLE domains
    ADD COLUMN postmaster text CHECK (postmaster LIKE '%_@_%'),
    ADD COLUMN catch_all text CHECK (catch_all LIKE '%_@_%'),
    ADD COLUMN alias_of text REFERENCES domains (name) ON DELETE RESTRICT
        CHECK (alias_of IS NULL OR (alias_of <> name AND role = 'local'));

-- Existing local domains get their oldest account as postmaster; `pochtactl domain postmaster`
-- changes it.
UPDATE domains d SET postmaster = (
    SELECT a.local_part || '@' || a.domain FROM accounts a WHERE a.domain = d.name
    ORDER BY a.id LIMIT 1)
WHERE d.role = 'local';

-- One row per target of an alias: an address, local or not, that may itself be an alias.
-- Names compare case-insensitively, as account names do.
CREATE TABLE aliases (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain      text NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    local_part  text NOT NULL CHECK (local_part <> ''),
    target      text NOT NULL CHECK (target LIKE '%_@_%'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX aliases_target_key ON aliases (domain, lower(local_part), lower(target));

-- An alias recipient is expanded by the queue into one row per final address (the parent's
-- state becomes 'expanded'); original_address is the address the sender gave, for the
-- X-Original-To: header of a delivery.
ALTER TABLE recipients DROP CONSTRAINT recipients_state_check;
ALTER TABLE recipients ADD CONSTRAINT recipients_state_check CHECK (state IN
    ('queued', 'held', 'delivered', 'relayed', 'failed', 'expired', 'expanded'));
ALTER TABLE recipients ADD COLUMN original_address text;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_result_check;
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_result_check CHECK (result IN
    ('queued', 'delivered', 'relayed', 'failed', 'expired', 'expanded'));

-- Settings every service shares. srs_secret: the key of SRS addresses (forwarded mail's
-- rewritten senders), made here once: 244 random bits from gen_random_uuid (a strong source).
CREATE TABLE settings (
    name   text PRIMARY KEY,
    value  text NOT NULL
);
INSERT INTO settings (name, value)
VALUES ('srs_secret', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
