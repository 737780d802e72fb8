-- OAuth provider links (users spec §5): one per user and provider, and a provider account
-- (scope, provider, client_id) linked to one user only, so a login by client id is unambiguous.
-- A user's links go with the user.
CREATE TABLE user_auth_providers (
    user_id              uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    scope                text        NOT NULL,
    provider             text        NOT NULL,
    client_id            text        NOT NULL,
    access_token         text,
    access_token_expiry  bigint,
    created              timestamptz NOT NULL DEFAULT now(),
    updated              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_auth_providers_user_provider_key PRIMARY KEY (user_id, provider),
    CONSTRAINT user_auth_providers_account_key UNIQUE (scope, provider, client_id)
);
