-- Links bound to the address they were sent to, and disabling that no link undoes.
--
-- A confirmation or reset code works only while the user's email is still the address it was
-- mailed to (NULL: a code from before this migration, which keeps working until used).
ALTER TABLE users ADD COLUMN confirmation_email text;
ALTER TABLE password_resets ADD COLUMN email text;
-- Set when the user's `active` was set false on purpose (the console's disable, an update);
-- a confirmation then confirms the address but leaves the user inactive.
ALTER TABLE users ADD COLUMN disabled boolean NOT NULL DEFAULT false;
