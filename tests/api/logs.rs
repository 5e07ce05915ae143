//! Logs: JSON lines, each line of a request carrying its request id, and never a
//! password, a token or the signing secret; a dependency that is down logged as a
//! warning, not as an internal error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, TestDb};

const PASSWORD: &str = "s3cret-horse-battery";
const SECRET: &str = "log-test-signing-secret-log-test-signing";

/// The `tally` binary as a child process logging JSON at `rust_log`, its stdout lines
/// collected (those before it served included).
struct LoggedServer {
    child: Child,
    received: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    captured: Vec<String>,
    base: String,
}

impl LoggedServer {
    fn start(database_url: &str, rust_log: &str) -> LoggedServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", SECRET)
            .env("TALLY_ADMIN_USERNAME", "root")
            .env("TALLY_ADMIN_PASSWORD", PASSWORD)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (lines, received) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut captured = Vec::new();
        let port = loop {
            let line = received
                .recv_timeout(Duration::from_secs(30))
                .expect("the server logs that it serves");
            captured.push(line.clone());
            let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if parsed["message"] == "Tally is serving" {
                break parsed["port"].as_u64().unwrap();
            }
        };
        LoggedServer {
            child,
            received,
            reader,
            captured,
            base: format!("http://127.0.0.1:{port}/api/v1"),
        }
    }

    /// The admin's login answer (access and refresh tokens).
    async fn admin_login(&self, client: &reqwest::Client) -> Value {
        client
            .post(format!("{}/auth/login", self.base))
            .json(&json!({ "username": "root", "password": PASSWORD }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stop gracefully; whether it exited 0, every stdout line, and stderr.
    fn stop(mut self) -> (bool, Vec<String>, String) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let exit = self.child.wait().unwrap();
        self.reader.join().unwrap();
        self.captured.extend(self.received.try_iter());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        (exit.success(), self.captured, stderr)
    }
}

#[actix_web::test]
async fn logs_are_json_with_request_ids_and_no_secrets() {
    let db = TestDb::create(Backend::Sqlite).await;
    let server = LoggedServer::start(&db.url, "debug");
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let registered: Value = client
        .post(format!("{base}/auth/register"))
        .header("x-request-id", "log-test-register")
        .json(&json!({ "username": "alice", "email": "alice@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login = server.admin_login(&client).await;
    let access = login["access_token"].as_str().unwrap().to_string();
    let refresh = login["refresh_token"].as_str().unwrap().to_string();
    let failed = client
        .post(format!("{base}/auth/login"))
        .json(&json!({ "username": "alice", "password": "wrong-password-here" }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);
    let credited = client
        .post(format!("{base}/transactions/credit"))
        .bearer_auth(&access)
        .header("x-request-id", "log-test-credit")
        .json(&json!({ "user_id": registered["id"], "amount": "12.00" }))
        .send()
        .await
        .unwrap();
    assert_eq!(credited.status(), 201);

    let (exited_cleanly, captured, stderr) = server.stop();
    assert!(exited_cleanly, "a graceful stop exits 0; stderr: {stderr}");

    let mut request_lines = 0;
    for line in &captured {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if parsed["message"] == "request" {
            request_lines += 1;
            assert!(
                parsed["span"]["request_id"].is_string(),
                "a request line without its id: {line}"
            );
        }
    }
    assert!(request_lines >= 4, "one access line per request");
    let credit_lines: Vec<&String> = captured
        .iter()
        .filter(|line| line.contains("log-test-credit"))
        .collect();
    assert!(!credit_lines.is_empty(), "lines of the credit carry its request id");
    let everything = format!("{}\n{stderr}", captured.join("\n"));
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", "wrong-password-here"),
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        ("signing secret", SECRET),
    ] {
        assert!(!everything.contains(secret), "the {what} appears in the logs");
    }
}

/// A store that is down is answered 503 and logged as a warning, never as the "internal
/// error" an operator is paged for.
#[actix_web::test]
async fn a_store_outage_is_logged_as_a_warning_not_an_internal_error() {
    for level in ["info", "debug"] {
        a_store_outage_is_logged_at(level).await;
    }
}

/// Whether `line` was logged in the request `id`: in its span or one around it.
fn logged_in_request(line: &Value, id: &str) -> bool {
    line["span"]["request_id"] == id
        || line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|span| span["request_id"] == id))
}

async fn a_store_outage_is_logged_at(level: &str) {
    let db = TestDb::create(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let server = LoggedServer::start(&db.url, level);
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let access = server.admin_login(&client).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // The database goes away: its connections are cut and new ones refused.
    let admin = tally_actors::testing::admin_url();
    let outage = |allow: bool| {
        let (admin, name) = (admin.clone(), name.clone());
        async move {
            use sqlx::{Connection, Executor};
            let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap();
            connection
                .execute(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"
                )))
                .await
                .unwrap();
            if !allow {
                connection
                    .execute(sqlx::AssertSqlSafe(format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                    )))
                    .await
                    .unwrap();
            }
        }
    };
    outage(false).await;
    let reply = client
        .get(format!("{base}/transactions/{}", uuid::Uuid::now_v7()))
        .bearer_auth(&access)
        .header("x-request-id", "log-test-outage")
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    let body: Value = reply.json().await.unwrap();
    // A keyed write: its key is looked up in the store by the engine's own task, which
    // logs the failure at the default level with the request's id.
    let keyed = client
        .post(format!("{base}/transactions/credit"))
        .bearer_auth(&access)
        .header("x-request-id", "log-test-keyed")
        .header("idempotency-key", "log-test-key")
        .json(&json!({ "user_id": 1, "amount": "1.00" }))
        .send()
        .await
        .unwrap();
    let keyed_status = keyed.status().as_u16();
    outage(true).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(keyed_status, 503);

    let (_, lines, _) = server.stop();
    let captured: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let of_the_request: Vec<&Value> = captured
        .iter()
        .filter(|line| logged_in_request(line, "log-test-outage"))
        .collect();
    assert!(
        of_the_request
            .iter()
            .any(|line| line["level"] == "WARN" && line["message"] == "unavailable; answered 503"),
        "the outage is logged as a warning: {of_the_request:?}"
    );
    assert!(
        captured
            .iter()
            .any(|line| logged_in_request(line, "log-test-keyed")
                && line["message"] == "cannot look up an idempotency key"),
        "what the engine's task logs at {level} carries the request's id: {captured:?}"
    );
    assert!(
        !captured.iter().any(|line| line["message"] == "internal error"),
        "an outage is not an internal error: {of_the_request:?}"
    );
}
