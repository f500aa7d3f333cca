-- Chunk rows may hold whole base64 lines as the octets they encode (content.rs, codec 2).
-- The check is replaced NOT VALID, as 0012 added it: no row is read or rewritten.
ALTER TABLE message_chunks DROP CONSTRAINT message_chunks_codec_known;
ALTER TABLE message_chunks
    ADD CONSTRAINT message_chunks_codec_known CHECK (codec IN (0, 1, 2)) NOT VALID;
