-- DKIM signing keys (RFC 6376; Ed25519 by RFC 8463). A domain signs with its active key of
-- each algorithm; a pending key is published in DNS ahead of a rotation, and a retired one
-- stays listed (its record must stay published a while) until it is removed. The private
-- key is PKCS#8 DER; the public key is what the DNS record's p= carries.
CREATE TABLE dkim_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain      text NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    selector    text NOT NULL,
    algorithm   text NOT NULL CHECK (algorithm IN ('ed25519', 'rsa')),
    private_key bytea NOT NULL,
    public_key  bytea NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain, selector)
);
CREATE UNIQUE INDEX dkim_keys_one_active ON dkim_keys (domain, algorithm) WHERE state = 'active';
CREATE UNIQUE INDEX dkim_keys_one_pending ON dkim_keys (domain, algorithm) WHERE state = 'pending';

-- Why an accepted message is quarantined (a DMARC quarantine policy), for the access
-- services to file it apart; NULL for ordinary mail.
ALTER TABLE messages ADD COLUMN quarantine text;

-- MTA-STS policies of recipient domains (RFC 8461 5.1), fetched by the queue and kept for
-- their max_age, shared by every replica and kept across restarts: a policy once seen keeps
-- protecting the domain even while an attacker hides its DNS record or web server.
CREATE TABLE mta_sts_policies (
    domain      text PRIMARY KEY,
    policy_id   text NOT NULL,
    mode        text NOT NULL CHECK (mode IN ('enforce', 'testing', 'none')),
    mx          text[] NOT NULL,
    max_age     bigint NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- REQUIRETLS (RFC 8689): the sender asked that every hop be verified TLS.
ALTER TABLE envelopes ADD COLUMN requiretls boolean NOT NULL DEFAULT false;

-- TLS reporting (RFC 8460): outbound TLS sessions to each recipient domain's MX hosts,
-- counted per reporting period, policy, MX host and result ('success' or an RFC 8460 result
-- type), until the period's report is taken; and which periods' reports were taken, so one
-- replica sends each.
CREATE TABLE tls_report_results (
    period_start  timestamptz NOT NULL,
    domain        text NOT NULL,
    policy_type   text NOT NULL CHECK (policy_type IN ('sts', 'no-policy-found')),
    policy_string text[] NOT NULL,
    mx_host       text NOT NULL,
    result        text NOT NULL,
    sessions      bigint NOT NULL,
    PRIMARY KEY (period_start, domain, policy_type, mx_host, result)
);
CREATE TABLE tls_reports_taken (
    period_start  timestamptz NOT NULL,
    domain        text NOT NULL,
    taken_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (period_start, domain)
);
