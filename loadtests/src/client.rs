//! Talking to Tally over HTTP: an [`ApiClient`] logged in as the admin (logging in again
//! when a token expires), and the [`HttpExecutor`] that turns each operation into a
//! request, retries what may be retried, and writes every write's outcome to the
//! [`WriteLog`] the verifier checks afterwards.
//!
//! Retrying: a write is retried only with an idempotency key, since a 503 or a lost
//! answer leaves its outcome unknown and only the same key makes a retry safe. Reads are
//! retried whenever keys are on (the chaos runs). Every retry loop is bounded in attempts
//! and in time.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::report::{Outcome, OutcomeClass};
use crate::runner::Executor;
use crate::workload::{Operation, OperationKind, format_minor, parse_minor};

/// Idle keep-alive connections kept per host: enough for the highest concurrency a
/// run on this kind of machine uses, so a closed loop never reconnects.
const IDLE_CONNECTIONS_MAX: usize = 1024;

/// How long a connection attempt may take; on the loopback anything longer means the
/// server is not listening (restarting, in a chaos run).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often one request logs in again after 401s before giving up: a fresh token that
/// is refused at once twice means the credentials, not the expiry, are wrong.
const RELOGIN_ATTEMPTS_MAX: usize = 2;

/// The longest `Retry-After` honoured; the server asks for seconds, a load test that
/// waits longer learns nothing more.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(2);

/// First and largest pause between retries after a transport error (exponential in
/// between): short, because a restarted server is back within a second or two.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// What an answer said, read whole.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// The problem's `code` (errors only).
    pub code: Option<String>,
    pub body: Value,
    pub retry_after: Option<Duration>,
    /// `idempotent-replayed: true`: the outcome of an earlier request with this key.
    pub replayed: bool,
}

impl Answer {
    /// The code to count this answer under.
    pub fn code_or_status(&self) -> String {
        self.code.clone().unwrap_or_else(|| format!("http_{}", self.status))
    }

    /// The transaction in the answer: the body of a 201, or the `transaction` of a 422.
    fn transaction(&self) -> Option<&Value> {
        if self.status == 201 {
            Some(&self.body)
        } else {
            self.body.get("transaction").filter(|value| value.is_object())
        }
    }
}

/// A request that got no answer.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct TransportError {
    /// `transport_connect`, `transport_timeout`, `transport_other`.
    pub kind: &'static str,
    pub message: String,
}

impl From<reqwest::Error> for TransportError {
    fn from(error: reqwest::Error) -> Self {
        let kind = if error.is_connect() {
            "transport_connect"
        } else if error.is_timeout() {
            "transport_timeout"
        } else {
            "transport_other"
        };
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        TransportError { kind, message }
    }
}

#[derive(Debug)]
struct Token {
    value: String,
    /// Bumped at every login, so concurrent 401s log in once.
    generation: u64,
}

/// A client of one Tally, logged in as an admin.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base_url: String,
    username: String,
    password: String,
    token: tokio::sync::Mutex<Token>,
    /// The admin's user id: the initiator of every write, to which keys are scoped.
    admin_id: i64,
}

impl ApiClient {
    /// Log in as `username` at `base_url` (`http://host:port`).
    pub async fn login(
        base_url: &str,
        username: &str,
        password: &str,
        request_timeout: Duration,
    ) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(IDLE_CONNECTIONS_MAX)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let (token, admin_id) = log_in(&http, &base_url, username, password).await?;
        Ok(ApiClient {
            http,
            base_url,
            username: username.to_string(),
            password: password.to_string(),
            token: tokio::sync::Mutex::new(Token {
                value: token,
                generation: 0,
            }),
            admin_id,
        })
    }

    pub fn admin_id(&self) -> i64 {
        self.admin_id
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn current_token(&self) -> (String, u64) {
        let token = self.token.lock().await;
        (token.value.clone(), token.generation)
    }

    /// Log in again unless someone already did since `seen_generation`.
    async fn refresh_token(&self, seen_generation: u64) -> Result<(), TransportError> {
        let mut token = self.token.lock().await;
        if token.generation != seen_generation {
            return Ok(());
        }
        let (value, _) = log_in(&self.http, &self.base_url, &self.username, &self.password)
            .await
            .map_err(|error| TransportError {
                kind: "login_failed",
                message: format!("{error:#}"),
            })?;
        token.value = value;
        token.generation += 1;
        Ok(())
    }

    /// Send one request under `/api/v1` (or at the root for paths starting `/healthz`,
    /// `/readyz`, `/metrics`), logging in again on 401.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, TransportError> {
        let url = format!("{}/api/v1{path}", self.base_url);
        let mut answer = None;
        for _ in 0..=RELOGIN_ATTEMPTS_MAX {
            let (token, generation) = self.current_token().await;
            let mut request = self.http.request(method.clone(), &url).bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let reply = read_answer(request.send().await?).await?;
            if reply.status != 401 {
                return Ok(reply);
            }
            answer = Some(reply);
            self.refresh_token(generation).await?;
        }
        Ok(answer.expect("the loop ran at least once"))
    }

    /// `GET` a path outside `/api/v1` (probes, metrics) as text.
    pub async fn get_root(&self, path: &str) -> Result<(u16, String), TransportError> {
        let response = self.http.get(format!("{}{path}", self.base_url)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The request for an operation: method, path and body.
    pub fn request_for(operation: &Operation) -> (reqwest::Method, String, Option<Value>) {
        use reqwest::Method;
        match *operation {
            Operation::Transfer { from, to, amount_minor } => (
                Method::POST,
                "/transactions/transfer".into(),
                Some(json!({ "from_user_id": from, "to_user_id": to, "amount": format_minor(amount_minor) })),
            ),
            Operation::Credit { user, amount_minor } => (
                Method::POST,
                "/transactions/credit".into(),
                Some(json!({ "user_id": user, "amount": format_minor(amount_minor) })),
            ),
            Operation::Debit { user, amount_minor } => (
                Method::POST,
                "/transactions/debit".into(),
                Some(json!({ "user_id": user, "amount": format_minor(amount_minor) })),
            ),
            Operation::History { user } => (Method::GET, format!("/transactions/user/{user}?limit=20"), None),
            Operation::Balance { user } => (Method::GET, format!("/balances/current/{user}"), None),
        }
    }

    pub async fn perform(&self, operation: &Operation, key: Option<&str>) -> Result<Answer, TransportError> {
        let (method, path, body) = Self::request_for(operation);
        self.send(method, &path, body.as_ref(), key).await
    }

    /// An account's balance and version from `/balances/current/{id}`.
    pub async fn balance(&self, user: i64) -> anyhow::Result<(i64, u64)> {
        let answer = self
            .send(reqwest::Method::GET, &format!("/balances/current/{user}"), None, None)
            .await?;
        if answer.status != 200 {
            bail!(
                "GET /balances/current/{user} answered {} {}",
                answer.status,
                answer.body
            );
        }
        let balance = answer.body["balance"]
            .as_str()
            .context("a balance string")
            .and_then(parse_signed)?;
        let version = answer.body["version"].as_u64().context("a version")?;
        Ok((balance, version))
    }

    /// `/readyz` as JSON (whatever its status).
    pub async fn readiness(&self) -> anyhow::Result<Value> {
        let (_, text) = self.get_root("/readyz").await?;
        serde_json::from_str(&text).with_context(|| format!("/readyz is not JSON: {text}"))
    }
}

fn parse_signed(text: &str) -> anyhow::Result<i64> {
    crate::workload::parse_signed_minor(text).map_err(anyhow::Error::msg)
}

async fn read_answer(response: reqwest::Response) -> Result<Answer, TransportError> {
    let status = response.status().as_u16();
    let headers = response.headers();
    let retry_after = headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let replayed = headers
        .get("idempotent-replayed")
        .is_some_and(|value| value.as_bytes() == b"true");
    let bytes = response.bytes().await?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = (status >= 400)
        .then(|| body.get("code").and_then(Value::as_str).map(str::to_string))
        .flatten();
    Ok(Answer {
        status,
        code,
        body,
        retry_after,
        replayed,
    })
}

async fn log_in(
    http: &reqwest::Client,
    base_url: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<(String, i64)> {
    let response = http
        .post(format!("{base_url}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .with_context(|| format!("logging in at {base_url}"))?;
    let status = response.status();
    let body: Value = response.json().await.context("reading the login answer")?;
    if !status.is_success() {
        bail!("logging in as {username} at {base_url} answered {status}: {body}");
    }
    let token = body["access_token"]
        .as_str()
        .context("the login answer has an access_token")?
        .to_string();
    let id = body["user"]["id"].as_i64().context("the login answer has user.id")?;
    Ok((token, id))
}

/// How a write ended, as far as the client knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum WriteAnswer {
    /// 201: applied; `replayed` when the answer replayed an earlier attempt's outcome.
    Completed { id: Uuid, replayed: bool },
    /// 422 with the recorded attempt (`failed` or `rolled_back`).
    Refused { id: Uuid, status: String, code: String },
    /// An error answer that says nothing was applied (429, a validation error).
    NotApplied { code: String },
    /// No answer, or an answer that leaves the outcome open (503, 500): with a key, the
    /// verifier looks the outcome up in the store.
    Unknown { last_error: String },
}

/// One write the run sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub sequence: u64,
    pub kind: OperationKind,
    /// The source account; 0 (external) for a credit.
    pub from: i64,
    /// The target account; 0 (external) for a debit.
    pub to: i64,
    pub amount_minor: i64,
    pub key: Option<String>,
    pub attempts: u32,
    #[serde(flatten)]
    pub answer: WriteAnswer,
}

impl WriteRecord {
    fn new(sequence: u64, operation: &Operation, key: Option<String>) -> Option<WriteRecord> {
        let (kind, from, to, amount_minor) = match *operation {
            Operation::Transfer { from, to, amount_minor } => (OperationKind::Transfer, from, to, amount_minor),
            Operation::Credit { user, amount_minor } => (OperationKind::Credit, 0, user, amount_minor),
            Operation::Debit { user, amount_minor } => (OperationKind::Debit, user, 0, amount_minor),
            Operation::History { .. } | Operation::Balance { .. } => return None,
        };
        Some(WriteRecord {
            sequence,
            kind,
            from,
            to,
            amount_minor,
            key,
            attempts: 0,
            answer: WriteAnswer::Unknown {
                last_error: "not sent".into(),
            },
        })
    }
}

/// Every write of a run and what the client was told, for the verifier.
#[derive(Debug, Default)]
pub struct WriteLog {
    writes: Mutex<Vec<WriteRecord>>,
}

impl WriteLog {
    pub fn push(&self, record: WriteRecord) {
        self.writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(record);
    }

    /// The writes in the order they were sent.
    pub fn take(&self) -> Vec<WriteRecord> {
        let mut writes = std::mem::take(&mut *self.writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        writes.sort_by_key(|write| write.sequence);
        writes
    }
}

/// The retry policy of keyed runs.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included.
    pub attempts_max: u32,
    /// The longest one operation keeps retrying, from its first attempt: bounds the wait
    /// for a server that does not come back.
    pub retry_time_max: Duration,
}

/// Sends operations through an [`ApiClient`].
#[derive(Debug)]
pub struct HttpExecutor {
    pub client: Arc<ApiClient>,
    /// Prefix of this run's idempotency keys; `None`: no keys, no retries.
    pub key_prefix: Option<String>,
    pub retry: RetryPolicy,
    pub writes: Arc<WriteLog>,
}

impl HttpExecutor {
    fn key_for(&self, sequence: u64) -> Option<String> {
        self.key_prefix.as_ref().map(|prefix| format!("{prefix}-{sequence}"))
    }
}

/// How a write's answer is filed in the log.
fn write_answer(answer: &Answer) -> WriteAnswer {
    let id = answer
        .transaction()
        .and_then(|transaction| transaction.get("id"))
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok());
    match (answer.status, id) {
        (201, Some(id)) => WriteAnswer::Completed {
            id,
            replayed: answer.replayed,
        },
        (422, Some(id)) => WriteAnswer::Refused {
            id,
            status: answer
                .transaction()
                .and_then(|t| t["status"].as_str())
                .unwrap_or("?")
                .to_string(),
            code: answer.code_or_status(),
        },
        // Refused before anything was recorded: rate limits, validation, a reused key,
        // an unknown user.
        (400..=499, _) => WriteAnswer::NotApplied {
            code: answer.code_or_status(),
        },
        _ => WriteAnswer::Unknown {
            last_error: answer.code_or_status(),
        },
    }
}

impl Executor for HttpExecutor {
    async fn execute(&self, sequence: u64, operation: Operation) -> Outcome {
        let is_write = operation.kind().is_write();
        let key = if is_write { self.key_for(sequence) } else { None };
        let retrying = self.key_prefix.is_some();
        let mut record = WriteRecord::new(sequence, &operation, key.clone());
        let started = Instant::now();
        let mut attempt_errors = Vec::new();
        let mut backoff = BACKOFF_FIRST;
        let mut class = OutcomeClass::Unknown("not sent".into());
        // Set once an attempt may have been applied without the client knowing: a later
        // answer refusing a retry (429) then proves nothing about the first.
        let mut uncertain = false;
        for attempt in 1..=self.retry.attempts_max.max(1) {
            if let Some(record) = &mut record {
                record.attempts = attempt;
            }
            let pause;
            match self.client.perform(&operation, key.as_deref()).await {
                Err(error) => {
                    uncertain = true;
                    attempt_errors.push(error.kind.to_string());
                    class = OutcomeClass::Unknown(error.kind.to_string());
                    if let Some(record) = &mut record {
                        record.answer = WriteAnswer::Unknown {
                            last_error: error.to_string(),
                        };
                    }
                    pause = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Ok(answer) => {
                    if let Some(record) = &mut record {
                        record.answer = write_answer(&answer);
                    }
                    let code = answer.code_or_status();
                    match answer.status {
                        200..=299 => {
                            class = OutcomeClass::Completed;
                            break;
                        }
                        422 if answer.transaction().is_some() => {
                            class = OutcomeClass::Refused(code);
                            break;
                        }
                        429 | 503 => {
                            attempt_errors.push(code.clone());
                            uncertain |= is_write && answer.status == 503;
                            class = if is_write && answer.status == 503 {
                                OutcomeClass::Unknown(code)
                            } else {
                                OutcomeClass::Failed(code)
                            };
                            pause = answer
                                .retry_after
                                .unwrap_or(backoff)
                                .min(RETRY_AFTER_MAX)
                                .max(BACKOFF_FIRST);
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                        _ => {
                            attempt_errors.push(code.clone());
                            class = if answer.status >= 500 && is_write {
                                OutcomeClass::Unknown(code)
                            } else {
                                OutcomeClass::Failed(code)
                            };
                            break;
                        }
                    }
                }
            }
            if !retrying || started.elapsed() + pause > self.retry.retry_time_max {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        if let Some(mut record) = record {
            if uncertain && let WriteAnswer::NotApplied { code } = &record.answer {
                record.answer = WriteAnswer::Unknown {
                    last_error: format!("{code} after an unanswered attempt"),
                };
            }
            if matches!(record.answer, WriteAnswer::Unknown { .. }) {
                uncertain = true;
            }
            if uncertain && class != OutcomeClass::Completed && !matches!(class, OutcomeClass::Refused(_)) {
                class = OutcomeClass::Unknown(match class {
                    OutcomeClass::Unknown(code) | OutcomeClass::Failed(code) => code,
                    _ => unreachable!("completed and refused are excluded"),
                });
            }
            self.writes.push(record);
        }
        Outcome { class, attempt_errors }
    }
}

/// Parse a decimal amount for a command-line flag.
pub fn amount_flag(text: &str) -> Result<i64, String> {
    parse_minor(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            code: body.get("code").and_then(Value::as_str).map(str::to_string),
            body,
            retry_after: None,
            replayed: false,
        }
    }

    #[test]
    fn answers_are_filed_by_what_they_say_about_the_write() {
        let id = Uuid::now_v7();
        assert_eq!(
            write_answer(&answer(201, json!({ "id": id.to_string(), "status": "completed" }))),
            WriteAnswer::Completed { id, replayed: false }
        );
        assert_eq!(
            write_answer(&answer(
                422,
                json!({ "code": "insufficient_funds", "transaction": { "id": id.to_string(), "status": "failed" } })
            )),
            WriteAnswer::Refused {
                id,
                status: "failed".into(),
                code: "insufficient_funds".into()
            }
        );
        assert_eq!(
            write_answer(&answer(429, json!({ "code": "rate_limited" }))),
            WriteAnswer::NotApplied {
                code: "rate_limited".into()
            }
        );
        assert_eq!(
            write_answer(&answer(503, json!({ "code": "unavailable" }))),
            WriteAnswer::Unknown {
                last_error: "unavailable".into()
            }
        );
        assert_eq!(
            write_answer(&answer(500, Value::Null)),
            WriteAnswer::Unknown {
                last_error: "http_500".into()
            }
        );
    }

    #[test]
    fn every_operation_maps_to_its_route_and_body() {
        let (method, path, body) = ApiClient::request_for(&Operation::Transfer {
            from: 3,
            to: 4,
            amount_minor: 1234,
        });
        assert_eq!(
            (method, path.as_str()),
            (reqwest::Method::POST, "/transactions/transfer")
        );
        assert_eq!(
            body.unwrap(),
            json!({ "from_user_id": 3, "to_user_id": 4, "amount": "12.34" })
        );
        let (_, path, body) = ApiClient::request_for(&Operation::Debit {
            user: 9,
            amount_minor: 5,
        });
        assert_eq!(path, "/transactions/debit");
        assert_eq!(body.unwrap(), json!({ "user_id": 9, "amount": "0.05" }));
        let (method, path, body) = ApiClient::request_for(&Operation::Balance { user: 9 });
        assert_eq!(
            (method, path.as_str(), body),
            (reqwest::Method::GET, "/balances/current/9", None)
        );
        let (_, path, _) = ApiClient::request_for(&Operation::History { user: 9 });
        assert_eq!(path, "/transactions/user/9?limit=20");
    }

    #[test]
    fn credits_come_from_and_debits_go_to_the_external_account() {
        let credit = WriteRecord::new(
            1,
            &Operation::Credit {
                user: 5,
                amount_minor: 7,
            },
            None,
        )
        .unwrap();
        assert_eq!((credit.from, credit.to), (0, 5));
        let debit = WriteRecord::new(
            2,
            &Operation::Debit {
                user: 5,
                amount_minor: 7,
            },
            None,
        )
        .unwrap();
        assert_eq!((debit.from, debit.to), (5, 0));
        assert!(WriteRecord::new(3, &Operation::Balance { user: 5 }, None).is_none());
    }
}
