-- The statement `core.users.get` / api.users get runs (src/users/store.rs), on a random seeded user.
\set n random(1, :users)
SELECT user_id, scope, username, email, "group", extra, active, confirmation,
       extract(epoch from created)::bigint, extract(epoch from updated)::bigint,
       extract(epoch from last_login)::bigint, login_count
FROM users
WHERE user_id = ('00000000-0000-4000-8000-' || lpad(to_hex(:n::int), 12, '0'))::uuid AND scope = 'default';
