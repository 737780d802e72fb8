-- Mail that cannot be aimed, and honest mail not stuck behind a flood.
--
-- The address a confirmation or reset mail goes to (lower-cased): at most so many such mails
-- per address an hour and a day, across every scope.
ALTER TABLE mail_outbox ADD COLUMN destination text;
CREATE INDEX mail_outbox_destination_idx ON mail_outbox (destination, created)
    WHERE destination IS NOT NULL;
-- The sender takes due mail of each kind in turn.
CREATE INDEX mail_outbox_due_purpose_idx ON mail_outbox (purpose, next_attempt, id)
    WHERE state = 'queued';
