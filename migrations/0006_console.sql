-- The operator's console: admins, their sessions, the audit trail, and the indexes its user
-- search needs.

-- Console accounts, made with `coronium admin add` (there is no default account or password).
CREATE TABLE admins (
    name          text        PRIMARY KEY,
    password_hash text        NOT NULL,
    created       timestamptz NOT NULL DEFAULT now(),
    last_login    timestamptz
);

-- Console sessions, in the database so every instance honours them. Only a SHA-256 hash of the
-- cookie's token is stored: a copy of this table logs no one in.
CREATE TABLE admin_sessions (
    token_hash bytea       PRIMARY KEY,
    admin      text        NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
    csrf       text        NOT NULL,
    created    timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    -- The absolute end, whatever the activity.
    expires    timestamptz NOT NULL
);
CREATE INDEX admin_sessions_expires_idx ON admin_sessions (expires);

-- Every change made through the console or the admin CLI: who, what, to which user, when.
-- Kept when the admin or the user is deleted (names and ids are copied, not referenced).
CREATE TABLE admin_audit (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    admin   text        NOT NULL,
    action  text        NOT NULL,
    scope   text,
    user_id uuid,
    detail  jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- Prefix search and keyset paging over usernames and emails, in byte order (the "C" collation)
-- so a prefix is a range of the index whatever the database's locale.
CREATE INDEX users_scope_username_c_idx ON users (scope, (lower(username) COLLATE "C"));
CREATE INDEX users_scope_email_c_idx ON users (scope, (lower(email) COLLATE "C"))
    WHERE email IS NOT NULL;
-- The pending list.
CREATE INDEX users_pending_idx ON users (scope, created) WHERE confirmation IS NOT NULL;
