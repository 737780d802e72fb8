-- Users registered without a password (users spec §2: `register(name, nil, scope)`) log in only
-- from server code; their hash is NULL.
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
