-- Chunk rows may hold their octets compressed (content.rs): `codec` names how, per row, so
-- content stored before this migration (all 0) and by a process with compression off reads
-- as it always did. A row still stores at most 8,000 octets (the page-sized CHECK of 0004);
-- a compressed row decodes to at most 64,000, so only raw rows are 8,000 content octets
-- each. Neither statement reads or rewrites the table: the default is filled in lazily, and
-- the check (which every existing row's default meets) binds new rows only.
ALTER TABLE message_chunks ADD COLUMN codec smallint NOT NULL DEFAULT 0;
ALTER TABLE message_chunks
    ADD CONSTRAINT message_chunks_codec_known CHECK (codec IN (0, 1)) NOT VALID;
