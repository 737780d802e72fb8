//! Correctness under concurrency lives in SQL: many coroutines on one Lua state, real database.

use std::rc::Rc;

use serde_json::json;

use crate::common::TestDb;

/// Loads `setup` into a fresh runtime on `db`, then runs `count` concurrent calls of the global
/// Lua `function` on that one state and collects their results.
async fn concurrently(
    db: &TestDb,
    setup: &str,
    function: &'static str,
    count: usize,
    args: Vec<serde_json::Value>,
) -> Vec<Vec<serde_json::Value>> {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let runtime = Rc::new(db.runtime().await);
            runtime.run_source("setup.lua", setup).await.unwrap();
            let tasks: Vec<_> = (0..count)
                .map(|_| {
                    let runtime = runtime.clone();
                    let args = args.clone();
                    tokio::task::spawn_local(
                        async move { runtime.call(function, &args).await.unwrap() },
                    )
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        })
        .await
}

#[tokio::test]
async fn twenty_concurrent_creates_of_one_username_one_wins() {
    let db = TestDb::new().await;
    let results = concurrently(
        &db,
        r#"
function signup(name)
  local outcome
  core.users.create({username = name, password = "pw"}, function(evt)
    outcome = evt.error and evt.status or "ok"
  end)
  return outcome
end"#,
        "signup",
        20,
        vec![json!("Racer")],
    )
    .await;
    let wins = results.iter().filter(|r| r[0] == json!("ok")).count();
    let dups = results.iter().filter(|r| r[0] == json!(600)).count();
    assert_eq!((wins, dups), (1, 19), "{results:?}");
    let client = db.client().await;
    let row = client
        .query_one("SELECT (SELECT count(*) FROM users), (SELECT sum(joins)::bigint FROM user_stats_daily)", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 1));
}

#[tokio::test]
async fn two_hundred_concurrent_logins_count_exactly() {
    let db = TestDb::new().await;
    let results = concurrently(
        &db,
        r#"
assert(core.users.create({username = "busy", password = "pw"}))
function login()
  local user, err = core.users.login({username = "busy", password = "pw"})
  return user and user.user_id or err
end"#,
        "login",
        200,
        vec![],
    )
    .await;
    let first = results[0][0].clone();
    assert!(
        results.iter().all(|r| r[0] == first),
        "every login succeeds as the same user"
    );
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT u.login_count, s.logins, s.joins, s.day = (now() AT TIME ZONE 'UTC')::date
             FROM users u JOIN user_stats_daily s ON s.scope = u.scope",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 200);
    assert_eq!(row.get::<_, i64>(1), 200);
    assert_eq!(row.get::<_, i64>(2), 1);
    assert!(row.get::<_, bool>(3));
}
