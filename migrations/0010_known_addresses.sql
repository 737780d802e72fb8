-- No number of strangers keeps an owner out (issue: strangers from 11 addresses locked a
-- player out by filling the account-wide counter).
--
-- The addresses an account logged in from (within 90 days) are known: the account-wide
-- counter, which strangers fill, no longer holds them back. Only the account's counter from
-- that very address (its own typos) and that address's own counter can. Unknown addresses are
-- still slowed by the account-wide limit, so a guesser with many addresses gains nothing.
CREATE TABLE login_known (
    scope        text        NOT NULL,
    account      text        NOT NULL,
    address      text        NOT NULL,
    last_success timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, account, address)
);
CREATE INDEX login_known_last_success_idx ON login_known (last_success);

-- The counters across accounts now live in a realm: '' for players, 'console' for the
-- console's sign-ins, so neither can lock the other out. And an IPv6 client is counted by its
-- /64 and, with a higher limit, by its /48 (p_network): one allocation cannot pose as 65,536
-- sprayers.
DROP FUNCTION coronium_login_attempt(text, text, text, integer, integer, integer, integer, integer);

CREATE FUNCTION coronium_login_attempt(
    p_realm text, p_scope text, p_account text, p_address text, p_network text,
    window_secs integer, pair_limit integer, account_limit integer, address_limit integer,
    network_limit integer, max_delay_secs integer)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz := now() - make_interval(secs => window_secs);
    r       login_failures;
    lim     integer;
    wait    double precision := 0;
    known   boolean;
    wide    text[] := CASE WHEN p_network IS NULL THEN ARRAY[p_address]
                           ELSE ARRAY[p_address, p_network] END;
BEGIN
    INSERT INTO login_failures (scope, account, address, failures, first_failure, last_failure)
    SELECT p_realm, '', a, 0, now(), now() FROM unnest(wide) a
    ON CONFLICT DO NOTHING;
    FOR r IN
        SELECT * FROM login_failures f
        WHERE f.scope = p_realm AND f.account = '' AND f.address = ANY (wide)
        ORDER BY f.address
        FOR UPDATE
    LOOP
        lim := CASE WHEN r.address = p_address THEN address_limit ELSE network_limit END;
        wait := greatest(wait, coronium_login_wait(r, horizon, lim, max_delay_secs));
    END LOOP;
    IF wait > 0 THEN
        RETURN wait;
    END IF;

    known := EXISTS (
        SELECT 1 FROM login_known k
        WHERE k.scope = p_scope AND k.account = p_account AND k.address = p_address
          AND k.last_success > now() - interval '90 days');
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
        lim := CASE WHEN r.address <> '' THEN pair_limit
                    WHEN known THEN 0
                    ELSE account_limit END;
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
          ((p_scope, p_account, ''), (p_scope, p_account, p_address))
       OR (f.scope = p_realm AND f.account = '' AND f.address = ANY (wide));
    RETURN 0;
END
$$;
