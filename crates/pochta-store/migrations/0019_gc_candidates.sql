-- Messages that may have lost their last maildrop entry (a POP3 deletion, an expunge, a
-- mailbox or account removed): the garbage collector looks at these, the messages new since
-- its pass before last, and a window of the others that moves on every pass, instead of at
-- every message of the store on every pass (BENCHMARKS.md, twenty-fifth session). A row
-- lost here only delays its content's collection until the window comes to it.
CREATE TABLE gc_candidates (
    message_id bigint NOT NULL
);

-- One insert per deleting statement, of the messages its deleted entries held.
CREATE FUNCTION gc_candidates_from_entries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gc_candidates (message_id) SELECT DISTINCT message_id FROM gone;
    RETURN NULL;
END
$$;

CREATE TRIGGER maildrop_entries_gc_candidates AFTER DELETE ON maildrop_entries
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION gc_candidates_from_entries();
