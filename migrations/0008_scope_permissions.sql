-- Client permissions per scope (users spec §9): the built-in modules' wire actions a client may
-- NOT call in a scope. No row: allowed (the default is every action everywhere).
CREATE TABLE scope_denied_actions (
    scope   text NOT NULL,
    -- 'api.users' or 'api.analytics'.
    project text NOT NULL,
    -- The action's v2 name (a v1 alias is checked under its v2 name).
    action  text NOT NULL,
    PRIMARY KEY (scope, project, action)
);
