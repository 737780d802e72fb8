-- The number of keys of a JSON object, for the bound on a user's `extra` (users.extra_max_keys).
-- A function, not a subquery in the update statement: a subquery there costs every update its
-- set-up (measured: 12% of PostgreSQL's update throughput), while the function is called only
-- for the rare large record (see store::update).
CREATE FUNCTION coronium_jsonb_keys(j jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT count(*)::integer FROM jsonb_object_keys(j) $$;
