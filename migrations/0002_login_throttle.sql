-- Failed-login counters, shared by every instance on this database and kept across restarts.
-- Three kinds of row, told apart by which key columns are empty:
--   (scope, account, address)  one account from one client address
--   (scope, account, '')       one account from every address
--   ('', '', address)          one address against every account of every scope
-- `account` is the user's id when the login names a user, else 'name:' || lower(login): the same
-- lower() the lookup compares with, so every spelling that finds a user counts against that user.
-- Unlogged: an attempt's count costs no WAL and its commit waits for no disk flush (every login
-- attempt writes here). The counts survive restarts of coronium and clean restarts of PostgreSQL;
-- only PostgreSQL's crash recovery empties the table.
CREATE UNLOGGED TABLE login_failures (
    scope         text        NOT NULL,
    account       text        NOT NULL,
    address       text        NOT NULL,
    failures      integer     NOT NULL,
    first_failure timestamptz NOT NULL,
    last_failure  timestamptz NOT NULL,
    PRIMARY KEY (scope, account, address)
);
CREATE INDEX login_failures_last_failure_idx ON login_failures (last_failure);

-- Decides whether a login attempt may check a password, and if so counts it as a failure
-- (a login that then succeeds takes it back). Returns 0 when the attempt may go on, else the
-- seconds to wait. Once a counter reaches its limit, each further attempt must wait twice as
-- long after the last failure as the one before (1 s, 2 s, 4 s ... up to max_delay_secs).
-- A row for one account from one address is forgotten after window_secs without a failure; the
-- wider rows count failures in windows of window_secs from their first one, so a busy shared
-- address is never locked for ever by slow, steady typos.
-- Concurrent attempts queue on row locks taken in key order (the address's own row sorts first),
-- so every one is counted before the next decides. An address already held back adds no rows:
-- a flood of made-up names from it grows nothing.
CREATE FUNCTION coronium_login_attempt(
    p_scope text, p_account text, p_address text, window_secs integer,
    pair_limit integer, account_limit integer, address_limit integer, max_delay_secs integer)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz := now() - make_interval(secs => window_secs);
    r       login_failures;
    counted integer;
    lim     integer;
    wait    double precision := 0;
BEGIN
    INSERT INTO login_failures (scope, account, address, failures, first_failure, last_failure)
    VALUES ('', '', p_address, 0, now(), now())
    ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM login_failures
    WHERE scope = '' AND account = '' AND address = p_address
    FOR UPDATE;
    wait := coronium_login_wait(r, horizon, address_limit, max_delay_secs);
    IF wait > 0 THEN
        RETURN wait;
    END IF;

    INSERT INTO login_failures (scope, account, address, failures, first_failure, last_failure)
    VALUES (p_scope, p_account, '', 0, now(), now()),
           (p_scope, p_account, p_address, 0, now(), now())
    ON CONFLICT DO NOTHING;
    FOR r IN
        SELECT * FROM login_failures f
        WHERE f.scope = p_scope AND f.account = p_account AND f.address IN ('', p_address)
        ORDER BY f.address
        FOR UPDATE
    LOOP
        lim := CASE WHEN r.address = '' THEN account_limit ELSE pair_limit END;
        wait := greatest(wait, coronium_login_wait(r, horizon, lim, max_delay_secs));
    END LOOP;
    IF wait > 0 THEN
        RETURN wait;
    END IF;

    UPDATE login_failures f SET
        failures = CASE WHEN coronium_login_counted(f, horizon) = 0 THEN 1
                        ELSE f.failures + 1 END,
        first_failure = CASE WHEN coronium_login_counted(f, horizon) = 0 THEN now()
                             ELSE f.first_failure END,
        last_failure = now()
    WHERE (f.scope, f.account, f.address) IN
          (('', '', p_address), (p_scope, p_account, ''), (p_scope, p_account, p_address));
    RETURN 0;
END
$$;

-- The failures a row still counts: one account from one address, since its last failure; the
-- wider rows, within the window that began with their first failure.
CREATE FUNCTION coronium_login_counted(r login_failures, horizon timestamptz)
RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN r.address <> '' AND r.account <> '' AND r.last_failure < horizon THEN 0
        WHEN (r.address = '' OR r.account = '') AND r.first_failure < horizon THEN 0
        ELSE r.failures END
$$;

-- Seconds a row makes the next attempt wait (0: none). A limit of 0 is no limit.
CREATE FUNCTION coronium_login_wait(
    r login_failures, horizon timestamptz, lim integer, max_delay_secs integer)
RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN lim > 0 AND coronium_login_counted(r, horizon) >= lim THEN greatest(0, extract(epoch FROM
            r.last_failure
            + make_interval(secs => least(max_delay_secs,
                                          2.0 ^ least(coronium_login_counted(r, horizon) - lim, 30)))
            - clock_timestamp()))::double precision
        ELSE 0 END
$$;
