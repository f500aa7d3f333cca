-- A message's content is freed as soon as nothing can read it any more: every recipient of its
-- envelopes has finished (finished is final) and no maildrop entry holds it. The envelope, its
-- recipients and their attempts stay for queue.retention_secs (for `pochtactl queue show`);
-- the messages row stays with them, its size and this time kept, its chunks gone.
ALTER TABLE messages ADD COLUMN content_collected_at timestamptz;
-- The sweep's candidates: messages whose content is still stored.
CREATE INDEX messages_content_live_idx ON messages (id) WHERE content_collected_at IS NULL;
