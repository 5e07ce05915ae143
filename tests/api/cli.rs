//! The operator commands of the `tally` binary: `admin create`, `migrate`, `verify`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::helpers::{Backend, TestDb};

fn tally(db: &TestDb, arguments: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(arguments)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", crate::helpers::JWT_SECRET)
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Commands that never read standard input may exit before the write lands: a broken pipe
    // then is expected, not a failure.
    let _ = child.stdin.take().unwrap().write_all(b"operator-password\n");
    child.wait_with_output().unwrap()
}

#[actix_web::test]
async fn admin_create_migrate_and_verify_work_from_the_command_line() {
    let db = TestDb::create(Backend::Sqlite).await;
    let migrated = tally(&db, &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let created = tally(
        &db,
        &["admin", "create", "--username", "ops", "--email", "ops@example.com"],
    );
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert!(String::from_utf8_lossy(&created.stdout).contains("created admin ops"));
    let again = tally(&db, &["admin", "create", "--username", "ops"]);
    assert_eq!(again.status.code(), Some(2), "a taken name is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("username_taken"));

    let store = tally_actors::Store::connect(&db.url, 1).await.unwrap();
    let ops = store.user_by_username("ops").await.unwrap().unwrap();
    assert_eq!(ops.role, tally_actors::Role::Admin);
    let verified = tally(&db, &["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok:"));

    // A balance that disagrees with its journal is reported and fails the command.
    sqlx::query("UPDATE balances SET amount = 5 WHERE user_id = ?1")
        .bind(ops.id)
        .execute(sqlx::SqlitePool::connect(&db.url).await.as_ref().unwrap())
        .await
        .unwrap();
    let broken = tally(&db, &["verify"]);
    assert_eq!(broken.status.code(), Some(1));
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(
        report.contains("conservation") && report.contains("balance mismatch"),
        "{report}"
    );

    let unknown = tally(&db, &["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown command"));
}
