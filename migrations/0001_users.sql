-- Users, one row per user per application scope.
CREATE TABLE users (
    user_id            uuid        PRIMARY KEY,
    scope              text        NOT NULL,
    username           text        NOT NULL,
    email              text,
    "group"            text        NOT NULL DEFAULT 'default',
    extra              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    password_hash      text        NOT NULL,
    active             boolean     NOT NULL DEFAULT true,
    -- NULL once confirmed (or never asked); 'pending' while the mail link is unused.
    confirmation       text        CHECK (confirmation IN ('pending', 'failed')),
    confirmation_code  text,
    created            timestamptz NOT NULL DEFAULT now(),
    updated            timestamptz NOT NULL DEFAULT now(),
    last_login         timestamptz,
    login_count        bigint      NOT NULL DEFAULT 0,
    CONSTRAINT users_extra_is_object CHECK (jsonb_typeof(extra) = 'object')
);

-- Username and email are unique per scope, compared case-insensitively, stored as typed.
CREATE UNIQUE INDEX users_scope_username_key ON users (scope, lower(username));
CREATE UNIQUE INDEX users_scope_email_key ON users (scope, lower(email)) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX users_confirmation_code_key ON users (confirmation_code)
    WHERE confirmation_code IS NOT NULL;
CREATE INDEX users_scope_group_idx ON users (scope, "group");

-- Daily counters per scope, bumped in the same statement as the join or login they count, so an
-- admin page reads a day's figures without scanning users or events.
CREATE TABLE user_stats_daily (
    scope   text   NOT NULL,
    day     date   NOT NULL,
    joins   bigint NOT NULL DEFAULT 0,
    logins  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, day)
);
