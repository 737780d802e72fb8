//! Every Lua example of the seed document, run verbatim with `coronium run` on a fresh database.

use std::path::PathBuf;

use crate::common::{TestDb, assert_ok, is_uuid, run_file, run_lua};

fn seed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/seed")
        .join(name)
}

#[tokio::test]
async fn seed_examples_behave_as_the_seed_says() {
    let db = TestDb::new().await;

    // The one-line signature blocks name undefined variables: they end quietly.
    for file in [
        "01-login-signature.lua",
        "03-create-signature.lua",
        "05-get-signature.lua",
        "07-update-signature.lua",
        "09-delete-signature.lua",
    ] {
        let run = run_file(&db, &seed(file));
        assert_ok(&run);
        assert_eq!(run.stdout, "", "{file} printed something");
        assert!(!run.stderr.contains("error"), "{file}: {}", run.stderr);
    }

    let created = run_file(&db, &seed("04-create.lua"));
    assert_ok(&created);
    let user_id = created.stdout.trim().to_owned();
    assert!(is_uuid(&user_id), "create printed {user_id:?}");

    let login = run_file(&db, &seed("02-login.lua"));
    assert_ok(&login);
    assert_eq!(
        login.stdout.trim(),
        user_id,
        "login prints the created user's id"
    );

    // A second create of "tiny" is a duplicate.
    let again = run_file(&db, &seed("04-create.lua"));
    assert_eq!(again.stdout.trim(), "Username already exists.");

    for (file, expected) in [
        ("06-get.lua", "User not found."),
        ("08-update.lua", "User not found."),
        ("10-delete.lua", "0"),
        ("11-null-constant.lua", "_NULL"),
        ("12-null-update.lua", "User not found."),
    ] {
        let run = run_file(&db, &seed(file));
        assert_ok(&run);
        assert_eq!(run.stdout.trim(), expected, "{file}");
    }

    // The fixed-id update wrote nothing, not even to another user.
    let client = db.client().await;
    let emails: i64 = client
        .query_one("SELECT count(*) FROM users WHERE email IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(emails, 0);
}

#[tokio::test]
async fn seed_null_example_removes_the_key_on_a_real_user() {
    let db = TestDb::new().await;
    let setup = run_lua(
        &db,
        "setup.lua",
        r#"print(core.users.create({username = "tiny", password = "abcd1234",
                                    extra = {color = "Blue", size = 3}}))"#,
    );
    assert_ok(&setup);
    let user_id = setup.stdout.trim();

    let source = std::fs::read_to_string(seed("12-null-update.lua")).unwrap();
    let run = run_lua(&db, "null.lua", &source.replace("<user_id>", user_id));
    assert_ok(&run);
    assert_eq!(run.stdout.trim(), user_id);

    let client = db.client().await;
    let extra: serde_json::Value = client
        .query_one(
            "SELECT extra FROM users WHERE user_id = $1::text::uuid",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(extra, serde_json::json!({"size": 3}));
}

#[tokio::test]
async fn the_users_tour_example_runs() {
    let db = TestDb::new().await;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/users-tour.lua");
    let run = run_file(&db, &path);
    assert_ok(&run);
    let lines = run.lines();
    assert!(lines[0].starts_with("created\t"));
    assert_eq!(
        &lines[2..],
        [
            "update\tRed\t2\tgold",
            "null\tnil\t2",
            "login\ttrue\t1",
            "delete\t1",
            "get after delete\tnil\tUser not found.\t604",
        ]
    );
    assert!(lines[1].starts_with("get\ttour_") && lines[1].ends_with("\tRed\t1"));
}
