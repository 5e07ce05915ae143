//! SQLite: the persister's commits only append to the write-ahead log; the engine copies
//! the log into the database file in the background, and empties the log once it is past
//! its limit, even while writes keep coming.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tally_actors::{Engine, EngineConfig, MoveRequest};

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

/// The write-ahead log's size on disk, 0 when there is none.
fn log_bytes(url: &str) -> u64 {
    let path = url.trim_start_matches("sqlite://");
    std::fs::metadata(format!("{path}-wal")).map_or(0, |metadata| metadata.len())
}

#[actix_rt::test]
async fn the_sqlite_log_is_emptied_past_its_limit_while_writes_keep_coming() {
    init_logging();
    let db = TestDb::create(Backend::Sqlite).await;
    let engine = Engine::open(EngineConfig {
        sqlite_wal_pages_max: 64,
        ..config(&db.url)
    })
    .await
    .unwrap();
    open_accounts(&engine, 20, 1_000_00).await;
    // Writers that never pause: a passive checkpoint alone never catches up with them,
    // and the file of the log only grows.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..8_i64 {
        let (engine, stop, written) = (engine.clone(), stop.clone(), written.clone());
        writers.push(actix_rt::spawn(async move {
            let mut step = 0;
            while !stop.load(Ordering::Relaxed) {
                let from = 1 + (writer + step) % 20;
                let to = 1 + (writer + step + 7) % 20;
                engine
                    .execute(MoveRequest::transfer(account(from), account(to), amount(1)))
                    .await
                    .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                step += 1;
            }
        }));
    }
    // The log shrinks while the writers go on: it was emptied under load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut largest = 0;
    let emptied = loop {
        let size = log_bytes(&db.url);
        if size < largest && written.load(Ordering::Relaxed) > 0 {
            break true;
        }
        largest = largest.max(size);
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let before = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept_writing = written.load(Ordering::Relaxed) > before;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(
        emptied,
        "the log never shrank under load (largest {largest} bytes, {} writes)",
        written.load(Ordering::Relaxed)
    );
    assert!(kept_writing, "the writers stalled after the log was emptied");
    // Nothing acknowledged was lost on the way: the accounts still sum to their funding.
    let mut total = 0;
    for id in 1..=20 {
        total += engine.balance(account(id)).await.unwrap().balance;
    }
    assert_eq!(total, 20 * 1_000_00);
    engine.shutdown().await;
}

/// A file Tally creates has 2 KiB pages: a commit appends every page it changed to the
/// log whole, so smaller pages make the persister's commits write less.
#[actix_rt::test]
async fn a_new_sqlite_file_has_small_pages() {
    init_logging();
    let db = TestDb::create(Backend::Sqlite).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 2, 10_00).await;
    engine.shutdown().await;
    let options = SqliteConnectOptions::from_str(&db.url).unwrap().read_only(true);
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(page_size, 2048);
    connection.close().await.unwrap();
}
