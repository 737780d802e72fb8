-- The statement an api.users update of one extra key runs (src/users/store.rs).
\set n random(1, :users)
\set v random(1, 1000000)
UPDATE users SET
  username = COALESCE(NULL::text, username),
  email = COALESCE(NULL::text, email),
  "group" = COALESCE(NULL::text, "group"),
  extra = (extra || jsonb_build_object('n', :v::int)) - '{}'::text[],
  password_hash = COALESCE(NULL::text, password_hash),
  active = COALESCE(NULL::boolean, active),
  disabled = COALESCE(NOT NULL::boolean, disabled),
  updated = now()
WHERE user_id = ('00000000-0000-4000-8000-' || lpad(to_hex(:n::int), 12, '0'))::uuid AND scope = 'default'
  AND CASE
    WHEN jsonb_build_object('n', :v::int) = '{}'::jsonb THEN true
    WHEN octet_length(((extra || jsonb_build_object('n', :v::int)) - '{}'::text[])::text)
         > GREATEST(65536::int8, octet_length(extra::text)) THEN false
    WHEN octet_length(((extra || jsonb_build_object('n', :v::int)) - '{}'::text[])::text) < 8 * 1000::int8
         THEN true
    ELSE coronium_jsonb_keys((extra || jsonb_build_object('n', :v::int)) - '{}'::text[])
         <= GREATEST(1000::int8, coronium_jsonb_keys(extra))
  END
RETURNING user_id, scope, username, email, "group", extra, active, confirmation,
          extract(epoch from created)::bigint, extract(epoch from updated)::bigint,
          extract(epoch from last_login)::bigint, login_count;
