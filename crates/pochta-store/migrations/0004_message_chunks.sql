-- Message content moves out of one TOASTed column into rows of at most 8,000 octets, each
-- stored inline (STORAGE PLAIN: one row per heap page, no TOAST table, no TOAST index). A
-- 100 KiB message is 13 rows instead of ~50 TOAST chunks and ~50 TOAST index entries, so
-- PostgreSQL writes and reads about a quarter of the tuples for the same octets.
--
-- A message's content is its chunks' data in seq order. Every chunk but the last holds exactly
-- 8,000 octets (readers find the chunk holding an offset by division); an empty message has
-- no chunks. No foreign key: its per-row check costs ~10 % of a large insert, and the store
-- is the only writer (collect_garbage deletes a message's chunks with the message).
CREATE TABLE message_chunks (
    message_id  bigint NOT NULL,
    seq         integer NOT NULL CHECK (seq >= 0),
    data        bytea NOT NULL CHECK (octet_length(data) BETWEEN 1 AND 8000),
    PRIMARY KEY (message_id, seq)
);
ALTER TABLE message_chunks ALTER COLUMN data SET STORAGE PLAIN;

INSERT INTO message_chunks (message_id, seq, data)
SELECT m.id, n, substring(m.content FROM n * 8000 + 1 FOR 8000)
FROM messages m, generate_series(0, ((m.size + 7999) / 8000 - 1)::int) AS n;

-- Drops the size check with it; the space of the old content is reclaimed by VACUUM FULL.
ALTER TABLE messages DROP COLUMN content;
ALTER TABLE messages ADD CHECK (size >= 0);
