//! SQLite: the persister's commits only append to the write-ahead log; the engine copies
//! the log into the database file in the background.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tally_actors::{Engine, MoveRequest};

use crate::support::{Backend, TestDb, account, amount, config, init_logging, open_accounts};

/// Account 1's balance as the database file alone holds it, the log ignored.
async fn balance_in_the_file(url: &str) -> Option<i64> {
    let options = SqliteConnectOptions::from_str(url)
        .unwrap()
        .immutable(true)
        .read_only(true);
    let mut connection = SqliteConnection::connect_with(&options).await.ok()?;
    let balance = sqlx::query_scalar::<_, i64>("SELECT amount FROM balances WHERE user_id = 1")
        .fetch_optional(&mut connection)
        .await
        .ok()
        .flatten();
    let _ = connection.close().await;
    balance
}

#[actix_rt::test]
async fn acknowledged_writes_reach_the_sqlite_file_while_the_engine_runs() {
    init_logging();
    let db = TestDb::create(Backend::Sqlite).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 10, 10_00).await;
    for step in 0..25 {
        engine
            .execute(MoveRequest::transfer(account(1), account(2 + step % 9), amount(10)))
            .await
            .unwrap();
    }
    // Far fewer pages than SQLite's own automatic checkpoint waits for (1,000): only the
    // engine's checkpoints bring them into the file while it runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if balance_in_the_file(&db.url).await == Some(10_00 - 25 * 10) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database file never caught up with the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await;
}
