//! Password storage: argon2id of md5_hex(plain), legacy md5 rows upgraded on login, rehash when
//! the configured parameters change, and the same answer for unknown users and wrong passwords.

use coronium::users::password::md5_hex;
use coronium::users::{
    ClientAddress, Credentials, HashParams, NewUser, PasswordForm, Scope, UserError,
};
use serde_json::json;

use crate::common::{TEST_HASH, TestDb};

fn scope(name: &str) -> Scope {
    Scope::parse(name).unwrap()
}

/// Logins from this process: no client address.
fn here() -> ClientAddress {
    ClientAddress::local()
}

fn params(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

async fn stored_hash(db: &TestDb, username: &str) -> String {
    db.client()
        .await
        .query_one(
            "SELECT password_hash FROM users WHERE username = $1",
            &[&username],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn argon2id_of_the_canonical_secret_so_lua_and_wire_agree() {
    let db = TestDb::new().await;
    let users = db.users_with(TEST_HASH).await;
    let new_user = NewUser::parse(
        &params(json!({"username": "tiny", "password": "abcd1234"})),
        PasswordForm::Plain,
    )
    .unwrap();
    users.create(&scope("default"), new_user).await.unwrap();
    let hash = stored_hash(&db, "tiny").await;
    assert!(hash.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{hash}");
    assert!(!hash.contains("abcd1234") && !hash.contains(&md5_hex("abcd1234")));

    // A wire client sends md5_hex(plain): the same user logs in.
    let wire = Credentials::parse(
        &params(json!({"username": "tiny", "password": md5_hex("abcd1234")})),
        PasswordForm::Canonical,
    )
    .unwrap();
    assert_eq!(
        users
            .login(&scope("default"), wire, &here())
            .await
            .unwrap()
            .username,
        "tiny"
    );
}

#[tokio::test]
async fn legacy_md5_rows_log_in_once_and_are_upgraded() {
    let db = TestDb::new().await;
    let users = db.users_with(TEST_HASH).await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO users (user_id, scope, username, password_hash) VALUES (gen_random_uuid(), 'default', 'old', $1)",
            &[&md5_hex("secret")],
        )
        .await
        .unwrap();
    let login = |password: &str| {
        Credentials::parse(
            &params(json!({"username": "old", "password": password})),
            PasswordForm::Plain,
        )
        .unwrap()
    };
    let err = users
        .login(&scope("default"), login("wrong"), &here())
        .await
        .unwrap_err();
    assert_eq!(err.status().code(), 603);
    assert_eq!(
        stored_hash(&db, "old").await,
        md5_hex("secret"),
        "a failed login upgrades nothing"
    );

    let user = users
        .login(&scope("default"), login("secret"), &here())
        .await
        .unwrap();
    assert_eq!(user.login_count, 1);
    assert!(stored_hash(&db, "old").await.starts_with("$argon2id$"));
    assert_eq!(
        users
            .login(&scope("default"), login("secret"), &here())
            .await
            .unwrap()
            .login_count,
        2
    );
}

#[tokio::test]
async fn rehash_when_the_configured_parameters_change() {
    let db = TestDb::new().await;
    let weak = db.users_with(TEST_HASH).await;
    let new_user = NewUser::parse(
        &params(json!({"username": "u", "password": "pw"})),
        PasswordForm::Plain,
    )
    .unwrap();
    weak.create(&scope("default"), new_user).await.unwrap();
    let before = stored_hash(&db, "u").await;

    let stronger = db
        .users_with(HashParams {
            m_cost: 512,
            t_cost: 2,
            p_cost: 1,
        })
        .await;
    let login = || {
        Credentials::parse(
            &params(json!({"username": "u", "password": "pw"})),
            PasswordForm::Plain,
        )
        .unwrap()
    };
    stronger
        .login(&scope("default"), login(), &here())
        .await
        .unwrap();
    let after = stored_hash(&db, "u").await;
    assert_ne!(before, after);
    assert!(
        after.starts_with("$argon2id$v=19$m=512,t=2,p=1$"),
        "{after}"
    );
    // With matching parameters the hash is left alone.
    stronger
        .login(&scope("default"), login(), &here())
        .await
        .unwrap();
    assert_eq!(stored_hash(&db, "u").await, after);
}

#[tokio::test]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let db = TestDb::new().await;
    let users = db.users_with(TEST_HASH).await;
    let new_user = NewUser::parse(
        &params(json!({"username": "real", "password": "pw", "email": "real@example.com"})),
        PasswordForm::Plain,
    )
    .unwrap();
    users.create(&scope("default"), new_user).await.unwrap();
    let attempt =
        |v: serde_json::Value| Credentials::parse(&params(v), PasswordForm::Plain).unwrap();
    for credentials in [
        attempt(json!({"username": "real", "password": "nope"})),
        attempt(json!({"username": "ghost", "password": "pw"})),
        attempt(json!({"email": "ghost@example.com", "password": "pw"})),
    ] {
        let err = users
            .login(&scope("default"), credentials, &here())
            .await
            .unwrap_err();
        assert!(matches!(err, UserError::BadCredentials));
        assert_eq!(
            (err.status().code(), err.to_string().as_str()),
            (603, "Invalid username or password.")
        );
    }
    // The right password in another scope is an unknown user there.
    let elsewhere = users
        .login(
            &scope("elsewhere"),
            attempt(json!({"username": "real", "password": "pw"})),
            &here(),
        )
        .await
        .unwrap_err();
    assert!(matches!(elsewhere, UserError::BadCredentials));
}
