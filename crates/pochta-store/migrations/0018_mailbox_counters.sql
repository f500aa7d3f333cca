-- Each mailbox keeps its number of messages, their size and how many are unseen, so that
-- STATUS (and LIST-STATUS, a STATUS per folder) reads one row instead of counting the
-- mailbox's entries: its cost no longer grows with the mailbox (BENCHMARKS.md, twenty-fourth
-- session). Triggers on maildrop_entries keep them, one update per mailbox and statement, so
-- every path that adds, removes or flags entries (deliveries, APPEND, COPY, MOVE, EXPUNGE,
-- POP3 deletions, STORE, and deletions cascading from a mailbox or an account) keeps them
-- right without knowing of them. The mailbox's row lock serialises the updates; the paths
-- that add or remove entries lock that row first already (the store's lock order).
ALTER TABLE mailboxes
    ADD COLUMN messages bigint NOT NULL DEFAULT 0,
    ADD COLUMN messages_size bigint NOT NULL DEFAULT 0,
    ADD COLUMN unseen bigint NOT NULL DEFAULT 0;

UPDATE mailboxes m
SET messages = c.messages, messages_size = c.size, unseen = c.unseen
FROM (
    SELECT mailbox_id, count(*) AS messages, sum(pop3_size) AS size,
           count(*) FILTER (WHERE NOT '\Seen' = ANY (flags)) AS unseen
    FROM maildrop_entries
    GROUP BY mailbox_id
) c
WHERE m.id = c.mailbox_id;

-- Entries added (INSERT) or removed (DELETE), as the transition table `moved` holds them.
CREATE FUNCTION mailbox_counters_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sign int := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    UPDATE mailboxes m
    SET messages = m.messages + sign * c.messages,
        messages_size = m.messages_size + sign * c.size,
        unseen = m.unseen + sign * c.unseen
    FROM (
        SELECT mailbox_id, count(*) AS messages, sum(pop3_size) AS size,
               count(*) FILTER (WHERE NOT '\Seen' = ANY (flags)) AS unseen
        FROM moved GROUP BY mailbox_id
    ) c
    WHERE m.id = c.mailbox_id;
    RETURN NULL;
END
$$;

-- Flags change in place (and nothing else does today): each changed entry is taken out of
-- its mailbox's counts as it was and put back as it is, one update per mailbox whose counts
-- moved.
CREATE FUNCTION mailbox_counters_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mailboxes m
    SET messages = m.messages + c.messages, messages_size = m.messages_size + c.size,
        unseen = m.unseen + coalesce(c.unseen, 0)
    FROM (
        SELECT mailbox_id, sum(sign) AS messages, sum(sign * pop3_size) AS size,
               sum(sign) FILTER (WHERE NOT '\Seen' = ANY (flags)) AS unseen
        FROM (
            SELECT mailbox_id, 1 AS sign, pop3_size, flags FROM after_change
            UNION ALL
            SELECT mailbox_id, -1, pop3_size, flags FROM before_change
        ) d
        GROUP BY mailbox_id
    ) c
    WHERE m.id = c.mailbox_id
      AND (c.messages <> 0 OR c.size <> 0 OR coalesce(c.unseen, 0) <> 0);
    RETURN NULL;
END
$$;

CREATE TRIGGER mailbox_counters_added AFTER INSERT ON maildrop_entries
    REFERENCING NEW TABLE AS moved
    FOR EACH STATEMENT EXECUTE FUNCTION mailbox_counters_moved();
CREATE TRIGGER mailbox_counters_removed AFTER DELETE ON maildrop_entries
    REFERENCING OLD TABLE AS moved
    FOR EACH STATEMENT EXECUTE FUNCTION mailbox_counters_moved();
CREATE TRIGGER mailbox_counters_changed AFTER UPDATE ON maildrop_entries
    REFERENCING OLD TABLE AS before_change NEW TABLE AS after_change
    FOR EACH STATEMENT EXECUTE FUNCTION mailbox_counters_changed();
