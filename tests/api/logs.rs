//! Logs: JSON lines, each line of a request carrying its request id, and never a
//! password, a token or the signing secret.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, TestDb};

const PASSWORD: &str = "s3cret-horse-battery";
const SECRET: &str = "log-test-signing-secret-log-test-signing";

#[actix_web::test]
async fn logs_are_json_with_request_ids_and_no_secrets() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", SECRET)
        .env("TALLY_ADMIN_USERNAME", "root")
        .env("TALLY_ADMIN_PASSWORD", PASSWORD)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
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
    let base = format!("http://127.0.0.1:{port}/api/v1");
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
    let login: Value = client
        .post(format!("{base}/auth/login"))
        .json(&json!({ "username": "root", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "a graceful stop exits 0");
    reader.join().unwrap();
    captured.extend(received.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();

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
