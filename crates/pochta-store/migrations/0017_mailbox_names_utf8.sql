-- Mailbox names are stored in UTF-8, as IMAP4rev2 writes them (RFC 9051 5.1), and converted
-- for IMAP4rev1 sessions, which write non-ASCII names in modified UTF-7 (RFC 3501 5.1.3).
-- Until now names were stored as the client wrote them: those in modified UTF-7 are decoded
-- here. A name that is not valid modified UTF-7 (or decodes to printable ASCII or controls,
-- which it may not encode), or whose decoded form another of the account's mailboxes has or
-- would get, is left as it is.
CREATE FUNCTION pg_temp.from_modified_utf7(name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    decoded text := '';
    rest text := name;
    amp int;
    dash int;
    encoded text;
    octets bytea;
    unit int;
    high int;
BEGIN
    IF name !~ '^[ -~]*$' THEN
        RETURN NULL;
    END IF;
    LOOP
        amp := strpos(rest, '&');
        IF amp = 0 THEN
            RETURN decoded || rest;
        END IF;
        decoded := decoded || substr(rest, 1, amp - 1);
        rest := substr(rest, amp + 1);
        dash := strpos(rest, '-');
        IF dash = 0 THEN
            RETURN NULL;
        END IF;
        encoded := substr(rest, 1, dash - 1);
        rest := substr(rest, dash + 1);
        IF encoded = '' THEN
            decoded := decoded || '&';
            CONTINUE;
        END IF;
        IF encoded !~ '^[A-Za-z0-9+,]+$' OR length(encoded) % 8 NOT IN (0, 3, 6) THEN
            RETURN NULL;
        END IF;
        encoded := translate(encoded, ',', '/');
        octets := decode(encoded || repeat('=', (4 - length(encoded) % 4) % 4), 'base64');
        high := NULL;
        FOR i IN 0 .. length(octets) / 2 - 1 LOOP
            unit := get_byte(octets, 2 * i) * 256 + get_byte(octets, 2 * i + 1);
            IF high IS NOT NULL THEN
                IF unit NOT BETWEEN 56320 AND 57343 THEN
                    RETURN NULL;
                END IF;
                decoded := decoded || chr(65536 + (high - 55296) * 1024 + (unit - 56320));
                high := NULL;
            ELSIF unit BETWEEN 55296 AND 56319 THEN
                high := unit;
            ELSIF unit BETWEEN 56320 AND 57343 OR unit < 160 THEN
                RETURN NULL;
            ELSE
                decoded := decoded || chr(unit);
            END IF;
        END LOOP;
        IF high IS NOT NULL THEN
            RETURN NULL;
        END IF;
    END LOOP;
END
$$;

UPDATE mailboxes m
SET name = d.decoded
FROM (
    SELECT id, decoded, count(*) OVER (PARTITION BY account_id, decoded) AS same
    FROM (
        SELECT id, account_id, pg_temp.from_modified_utf7(name) AS decoded
        FROM mailboxes
        WHERE strpos(name, '&') > 0
    ) named
) d
WHERE m.id = d.id
  AND d.decoded IS NOT NULL
  AND d.decoded <> m.name
  AND d.same = 1
  AND NOT EXISTS (
      SELECT 1 FROM mailboxes o WHERE o.account_id = m.account_id AND o.name = d.decoded
  );

DROP FUNCTION pg_temp.from_modified_utf7(text);
