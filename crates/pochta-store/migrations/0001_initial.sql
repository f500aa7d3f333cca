-- Pochta message store, first schema.
-- Names: singular meaning per row, plural tables. All times are timestamptz from the database clock.

-- Domains Pochta knows. role: 'local' = maildrops here; 'hold' = backup MX, mail kept until ETRN;
-- 'relay' = we are its MX or gateway: mail for it is accepted from anyone and forwarded.
CREATE TABLE domains (
    name        text PRIMARY KEY CHECK (name = lower(name) AND name <> ''),
    role        text NOT NULL CHECK (role IN ('local', 'hold', 'relay')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Mail accounts of local domains. Local parts compare case-insensitively (RFC 5321 2.4 lets the
-- receiving host decide; we choose insensitive), so uniqueness is on lower(local_part).
CREATE TABLE accounts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain         text NOT NULL REFERENCES domains (name) ON DELETE RESTRICT,
    local_part     text NOT NULL CHECK (local_part <> ''),
    password_hash  text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    disabled       boolean NOT NULL DEFAULT false,
    quota_bytes    bigint CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_address_key ON accounts (domain, lower(local_part));

-- Message content, immutable once written: the bytes as accepted (CRLF line ends, dot-unstuffed,
-- with the ingress Received: header first). One row per accepted transaction, shared by all its
-- recipients and maildrop entries. EXTERNAL storage: out of line, uncompressed (mail is mostly
-- already compressed or small; compression would cost CPU on the hot path).
CREATE TABLE messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    content     bytea NOT NULL,
    size        bigint NOT NULL CHECK (size = octet_length(content)),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE messages ALTER COLUMN content SET STORAGE EXTERNAL;

-- The SMTP envelope of one accepted transaction, with every ESMTP/DSN parameter (RFC 3461 4.3/4.4,
-- RFC 6152, RFC 6531) and where it came from.
CREATE TABLE envelopes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id        text NOT NULL UNIQUE CHECK (queue_id ~ '^[0-9A-Z]{8,32}$'),
    message_id      bigint NOT NULL REFERENCES messages (id) ON DELETE RESTRICT,
    reverse_path    text NOT NULL,            -- '' is the null reverse-path <>
    envid           text,                     -- ENVID, decoded from xtext
    ret             text CHECK (ret IN ('FULL', 'HDRS')),
    body            text CHECK (body IN ('7BIT', '8BITMIME', 'BINARYMIME')),
    smtputf8        boolean NOT NULL DEFAULT false,
    client_address  inet,
    client_helo     text,
    auth_user       text,
    received_by     text,                     -- host name of the ingress that accepted it
    traceparent     text,                     -- W3C trace context of the accepting transaction
    arrived_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    CHECK (expires_at > arrived_at)
);
CREATE INDEX envelopes_message_id_idx ON envelopes (message_id);
CREATE INDEX envelopes_arrived_at_idx ON envelopes (arrived_at);

-- One row per accepted recipient: its DSN parameters and its delivery state.
-- state: queued (due at next_attempt_at), held (waits for ETRN or an admin release), and the final
-- states delivered, relayed, failed, expired. A row is leased to one queue worker at a time.
CREATE TABLE recipients (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope_id       bigint NOT NULL REFERENCES envelopes (id) ON DELETE CASCADE,
    address           text NOT NULL CHECK (address LIKE '%_@_%'),
    domain            text NOT NULL CHECK (domain = lower(domain) AND domain <> ''),
    orcpt             text,                   -- ORCPT as given: 'addr-type;xtext'
    notify            text CHECK (notify ~ '^(NEVER|(SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY))*)$'),
    state             text NOT NULL CHECK (state IN ('queued', 'held', 'delivered', 'relayed', 'failed', 'expired')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_attempt_at   timestamptz,
    last_reply_code   integer CHECK (last_reply_code BETWEEN 200 AND 599),
    last_status       text,                   -- enhanced status code, e.g. '4.4.1'
    last_diagnostic   text,
    last_remote_mta   text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    finished_at       timestamptz,
    CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL)),
    CHECK ((state IN ('queued', 'held')) = (finished_at IS NULL))
);
CREATE INDEX recipients_envelope_id_idx ON recipients (envelope_id);
-- The claim query's index: only live rows, in due order.
CREATE INDEX recipients_due_idx ON recipients (next_attempt_at) WHERE state = 'queued';
-- ETRN and admin filters by domain over live rows.
CREATE INDEX recipients_live_domain_idx ON recipients (domain) WHERE state IN ('queued', 'held');

-- Every delivery attempt, for `pochtactl queue show`: why is this message stuck?
CREATE TABLE delivery_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_id  bigint NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    worker        text NOT NULL,
    remote_mta    text,
    reply_code    integer CHECK (reply_code BETWEEN 200 AND 599),
    status        text,
    diagnostic    text NOT NULL,
    result        text NOT NULL CHECK (result IN ('queued', 'delivered', 'relayed', 'failed', 'expired'))
);
CREATE INDEX delivery_attempts_recipient_id_idx ON delivery_attempts (recipient_id);

-- Messages delivered into an account's maildrop. UNIQUE (recipient_id) makes local delivery
-- exactly-once: a second delivery of the same recipient cannot insert a second entry.
-- header_prefix holds the per-delivery Return-Path: and Delivered-To: lines (CRLF ends);
-- pop3_size = octet_length(header_prefix) + messages.size, the octets RETR sends before
-- dot-stuffing. uid is the stable POP3 UIDL (RFC 1939 7): unique per maildrop, never reused,
-- 32 characters from 0-9a-f.
CREATE TABLE maildrop_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message_id     bigint NOT NULL REFERENCES messages (id) ON DELETE RESTRICT,
    recipient_id   bigint UNIQUE REFERENCES recipients (id) ON DELETE SET NULL,
    header_prefix  bytea NOT NULL,
    pop3_size      bigint NOT NULL CHECK (pop3_size >= 0),
    uid            text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', ''),
    delivered_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, uid)
);
CREATE INDEX maildrop_entries_account_idx ON maildrop_entries (account_id, id);
CREATE INDEX maildrop_entries_message_id_idx ON maildrop_entries (message_id);

-- One POP3 session per maildrop across all pop3-access replicas (RFC 1939 8: exclusive-access
-- lock). The holder renews expires_at while its session lives; a crashed holder's lock expires.
CREATE TABLE maildrop_locks (
    account_id  bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    owner       text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
