-- Analytics (`api.analytics` over the wire: appOpened and event). A request writes one row to an
-- inbox; a roll-up moves the inbox, in one statement, into the raw events (kept for
-- analytics.keep_days) and into daily counts per scope, so the console reads a month of figures
-- from a few hundred rows and no request waits on a busy counter row.
-- The inbox is unlogged: an insert costs no WAL flush. What it holds between two roll-ups (a few
-- seconds) is lost only if PostgreSQL itself crashes; the events and counts are logged tables.
CREATE UNLOGGED TABLE analytics_inbox (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    scope        text        NOT NULL,
    -- 'open' (appOpened) or 'event'.
    kind         text        NOT NULL,
    -- The app's name (open) or the event's name (event).
    name         text,
    device       text,
    platform     text,
    platform_ver text,
    version      text,
    model        text,
    manufacturer text,
    country_code text,
    -- The rest: screen size, Corona build, an event's value.
    data         jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE analytics_events (LIKE analytics_inbox);
ALTER TABLE analytics_events ADD PRIMARY KEY (id);
CREATE INDEX analytics_events_at_idx ON analytics_events (at);
CREATE INDEX analytics_events_scope_at_idx ON analytics_events (scope, at);

-- Counts per scope, UTC day, metric ('opens', 'platform', 'version', 'model', 'event') and key
-- (the platform, version, model or event name; '' for opens).
CREATE TABLE analytics_daily (
    scope  text   NOT NULL,
    day    date   NOT NULL,
    metric text   NOT NULL,
    key    text   NOT NULL,
    count  bigint NOT NULL,
    PRIMARY KEY (scope, day, metric, key)
);
