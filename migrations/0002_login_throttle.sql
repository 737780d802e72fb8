-- Failed-login counters, shared by every instance on this database and kept across restarts.
-- Three kinds of row, told apart by which key columns are empty:
--   (scope, account, address)  one account from one client address
--   (scope, account, '')       one account from every address
--   ('', '', address)          one address against every account of every scope
-- `account` is the user's id when the login names a user, else 'name:' || lower(login): the same
-- lower() the lookup compares with, so every spelling that finds a user counts against that user.
CREATE TABLE login_failures (
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
-- The rows are locked in key order, so concurrent attempts queue here and every one is counted.
CREATE FUNCTION coronium_login_attempt(
    p_scope text, p_account text, p_address text, window_secs integer,
    pair_limit integer, account_limit integer, address_limit integer, max_delay_secs integer)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz := now() - make_interval(secs => window_secs);
    r       record;
    counted integer;
    lim     integer;
    wait    double precision := 0;
BEGIN
    INSERT INTO login_failures (scope, account, address, failures, first_failure, last_failure)
    SELECT k.scope, k.account, k.address, 0, now(), now()
    FROM (VALUES (p_scope, p_account, p_address), (p_scope, p_account, ''), ('', '', p_address))
         AS k (scope, account, address)
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING;

    FOR r IN
        SELECT * FROM login_failures f
        WHERE (f.scope, f.account, f.address) IN
              ((p_scope, p_account, p_address), (p_scope, p_account, ''), ('', '', p_address))
        ORDER BY f.scope, f.account, f.address
        FOR UPDATE
    LOOP
        IF r.address = '' THEN
            lim := account_limit;
        ELSIF r.account = '' THEN
            lim := address_limit;
        ELSE
            lim := pair_limit;
        END IF;
        IF r.address <> '' AND r.account <> '' THEN
            counted := CASE WHEN r.last_failure < horizon THEN 0 ELSE r.failures END;
        ELSE
            counted := CASE WHEN r.first_failure < horizon THEN 0 ELSE r.failures END;
        END IF;
        IF lim > 0 AND counted >= lim THEN
            wait := greatest(wait, extract(epoch FROM
                r.last_failure
                + make_interval(secs => least(max_delay_secs, 2.0 ^ least(counted - lim, 30)))
                - clock_timestamp()));
        END IF;
    END LOOP;

    IF wait > 0 THEN
        RETURN wait;
    END IF;

    UPDATE login_failures f SET
        failures = CASE
            WHEN f.address <> '' AND f.account <> '' AND f.last_failure < horizon THEN 1
            WHEN (f.address = '' OR f.account = '') AND f.first_failure < horizon THEN 1
            ELSE f.failures + 1 END,
        first_failure = CASE
            WHEN f.failures = 0 OR f.first_failure < horizon THEN now() ELSE f.first_failure END,
        last_failure = now()
    WHERE (f.scope, f.account, f.address) IN
          ((p_scope, p_account, p_address), (p_scope, p_account, ''), ('', '', p_address));
    RETURN 0;
END
$$;
