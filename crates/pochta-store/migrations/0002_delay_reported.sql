-- Whether the delay report NOTIFY=DELAY asks for was sent (RFC 3461 4.1): at most once per
-- recipient.
ALTER TABLE recipients ADD COLUMN delay_reported boolean NOT NULL DEFAULT false;
