-- The header fields IMAP SEARCH names most (SUBJECT, FROM, TO, CC, BCC; SENTBEFORE/ON/SINCE
-- read the Date: day), kept with each message as pochta-mail's header_search makes them, so a
-- search over a mailbox reads one narrow row per message instead of its first content chunk
-- (a heap page each). `search_fields` says they were kept: false for messages stored before
-- this migration and for those whose fields were too long to keep; SEARCH reads those
-- messages' octets as before. A NULL field is one the message does not have. Adding columns
-- with constant defaults rewrites nothing.
ALTER TABLE messages
    ADD COLUMN search_fields boolean NOT NULL DEFAULT false,
    ADD COLUMN search_subject text,
    ADD COLUMN search_from text,
    ADD COLUMN search_to text,
    ADD COLUMN search_cc text,
    ADD COLUMN search_bcc text,
    ADD COLUMN search_sent_on date;
