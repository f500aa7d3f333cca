-- Deleted by an administrator who asked for a report: the next pass fails the recipient with
-- the failure report NOTIFY asks for, instead of delivering it.
ALTER TABLE recipients ADD COLUMN cancelled boolean NOT NULL DEFAULT false;
