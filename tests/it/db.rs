//! The per-worker database handle: shared statements and reserved transactions side by side.

use std::time::Duration;

use coronium::db::{DbHandle, PingError};

use crate::common::TestDb;

/// How many tables are called `name`, read through the handle's shared connection.
async fn tables_named(handle: &DbHandle, name: &str) -> Result<i64, PingError> {
    handle
        .read(|client| async move {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_tables WHERE tablename = $1",
                    &[&name],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
}

/// A transaction holds a connection of its own: shared reads and writes go on while it is open,
/// and see its work only once it commits.
#[tokio::test]
async fn a_transaction_runs_beside_shared_statements() {
    let db = TestDb::new().await;
    let handle = db.open().await.new_handle(2).unwrap();
    let outside = handle.clone();
    handle
        .transaction(async |tx| {
            tx.batch_execute(
                "CREATE TABLE ledger (n integer); INSERT INTO ledger VALUES (1); \
                 INSERT INTO ledger VALUES (2)",
            )
            .await?;
            let before =
                tokio::time::timeout(Duration::from_secs(5), tables_named(&outside, "ledger"))
                    .await
                    .expect("a shared read does not wait for the open transaction")?;
            assert_eq!(before, 0, "uncommitted work is not seen");
            tokio::time::timeout(Duration::from_secs(5), outside.ping())
                .await
                .expect("the health check does not wait either")?;
            Ok::<(), PingError>(())
        })
        .await
        .unwrap();
    assert_eq!(tables_named(&handle, "ledger").await.unwrap(), 1);
    let sum = handle
        .write(|client| async move {
            let row = client
                .query_one("SELECT sum(n)::bigint FROM ledger", &[])
                .await?;
            Ok::<i64, PingError>(row.get(0))
        })
        .await
        .unwrap();
    assert_eq!(sum, 3);
}

/// A transaction whose work fails, or that is dropped before it ends (a request cut off), leaves
/// nothing behind, and its connection serves again.
#[tokio::test]
async fn a_failed_or_dropped_transaction_rolls_back() {
    let db = TestDb::new().await;
    let handle = db.open().await.new_handle(2).unwrap();
    for _ in 0..3 {
        let failed = handle
            .transaction(async |tx| {
                tx.batch_execute("CREATE TABLE scratch (n integer)").await?;
                tx.batch_execute("SELECT no_such_column FROM scratch")
                    .await?;
                Ok::<(), PingError>(())
            })
            .await;
        assert!(failed.is_err());
        let cut_off = handle.transaction(async |tx| {
            tx.batch_execute("CREATE TABLE scratch (n integer)").await?;
            std::future::pending::<()>().await;
            Ok::<(), PingError>(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), cut_off)
                .await
                .is_err()
        );
    }
    let left = tables_named(&handle, "scratch").await.unwrap();
    assert_eq!(left, 0);
}
