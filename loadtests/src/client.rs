//! Talking to Tally over HTTP: an [`ApiClient`] logged in as the admin (logging in again
//! when a token expires) and, given the deployment's JWT secret, acting as each load-test
//! user for their own transfers and reads (see [`crate::owners`]); and the
//! [`HttpExecutor`] that turns each operation into a request, retries what may be
//! retried, and writes every write's outcome to the [`WriteLog`] the verifier checks
//! afterwards.
//!
//! Retrying: a write is retried only with an idempotency key, since a 503 or a lost
//! answer leaves its outcome unknown and only the same key makes a retry safe. Reads are
//! retried whenever keys are on (the chaos runs). Every retry loop is bounded in attempts
//! and in time.
//!
//! A hold is two requests, each retried on its own: the placement (a pending transfer,
//! key `{run}-{n}`) and, once it is answered 201, its post or void (key
//! `{run}-{n}-settle`). The server keys the placement; a settlement it makes safe to
//! repeat by itself — settling a hold again the same way is answered as a replay — so
//! the settlement's key is sent for the record and for the server's logs. A batch is one
//! request with one key.

use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::http::{Request, Transport};
use crate::owners::OwnerTokens;
use crate::report::{Outcome, OutcomeClass, Step};
use crate::runner::Executor;
use crate::workload::{HoldSettlement, Operation, OperationKind, format_minor, parse_minor};

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

/// The expiry of every hold the tester places. The tester settles each hold right
/// away; the expiry only releases one it lost track of (its settlement never answered,
/// the run interrupted between the two requests) instead of keeping the funds reserved
/// for good. An hour is far beyond any retry budget a run uses, so the server never
/// expires a hold the tester is still settling.
pub const HOLD_EXPIRES_IN_SECONDS: u64 = 3600;

/// What an answer said. The body is kept as it came and read whole only when asked
/// for ([`Answer::body`]): a completed movement is filed by its id alone, read without
/// building the rest, which the load generator would otherwise do for every request,
/// taking the cores it shares with the server it measures.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// The problem's `code` (errors only).
    pub code: Option<String>,
    raw: Vec<u8>,
    body: OnceLock<Value>,
    pub retry_after: Option<Duration>,
    /// `idempotent-replayed: true`: the outcome of an earlier request with this key.
    pub replayed: bool,
}

/// The members a completed write is filed by (see [`filed_answer`]); the rest of the
/// body is skipped unread.
#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    batch_id: Option<String>,
}

impl Answer {
    /// An answer from its status, two headers and its body (JSON, or `null` when not).
    fn read(status: u16, retry_after: Option<Duration>, replayed: bool, raw: Vec<u8>) -> Answer {
        let mut answer = Answer {
            status,
            code: None,
            raw,
            body: OnceLock::new(),
            retry_after,
            replayed,
        };
        if status >= 400 {
            answer.code = answer.body().get("code").and_then(Value::as_str).map(str::to_string);
        }
        answer
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn body(&self) -> &Value {
        self.body
            .get_or_init(|| serde_json::from_slice(&self.raw).unwrap_or(Value::Null))
    }

    /// The string member `field` (`id` or `batch_id`) of a 2xx body, read without
    /// building the whole body when it can be.
    fn identity(&self, field: &str) -> Option<String> {
        let quick = serde_json::from_slice::<Identity>(&self.raw)
            .ok()
            .and_then(|identity| match field {
                "id" => Some(identity.id),
                "batch_id" => Some(identity.batch_id),
                _ => None,
            });
        // Another field, or not that shape (a member of another type): read whole.
        quick.unwrap_or_else(|| self.body().get(field).and_then(Value::as_str).map(str::to_string))
    }

    /// The code to count this answer under.
    pub fn code_or_status(&self) -> String {
        self.code.clone().unwrap_or_else(|| format!("http_{}", self.status))
    }

    /// What the answer recorded: the body of a 2xx (201 for a movement or a batch, 200
    /// for a hold's settlement), or the problem's `extension` member (`transaction` or
    /// `batch`) of a 422.
    fn record(&self, extension: &str) -> Option<&Value> {
        if (200..=299).contains(&self.status) {
            Some(self.body())
        } else {
            self.body().get(extension).filter(|value| value.is_object())
        }
    }

    /// What an error answer says the server recorded: a refused movement's
    /// `transaction`, or a refused batch's `batch`.
    fn recorded(&self) -> Option<&Value> {
        ["transaction", "batch"]
            .into_iter()
            .find_map(|field| self.body().get(field).filter(|value| value.is_object()))
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
    value: Arc<str>,
    /// Bumped at every login, so concurrent 401s log in once.
    generation: u64,
}

/// A client of one Tally, logged in as an admin.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    /// API requests go over the tester's own lean transport (see [`crate::http`]);
    /// `http` logs in and reads the probes.
    transport: Transport,
    base_url: String,
    username: String,
    password: String,
    token: tokio::sync::Mutex<Token>,
    /// The admin's user id: the initiator of every write not sent as its account's
    /// owner, to which keys are scoped.
    admin_id: i64,
    /// The load-test users' own tokens, when the tester has the deployment's secret.
    owners: Option<OwnerTokens>,
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
        let transport = Transport::new(&base_url, IDLE_CONNECTIONS_MAX, CONNECT_TIMEOUT, request_timeout)?;
        Ok(ApiClient {
            http,
            transport,
            base_url,
            username: username.to_string(),
            password: password.to_string(),
            token: tokio::sync::Mutex::new(Token {
                value: Arc::from(token),
                generation: 0,
            }),
            admin_id,
            owners: None,
        })
    }

    /// Send each enrolled user's own transfers and reads with their own token.
    pub fn with_owners(mut self, owners: OwnerTokens) -> ApiClient {
        self.owners = Some(owners);
        self
    }

    pub fn owners(&self) -> Option<&OwnerTokens> {
        self.owners.as_ref()
    }

    /// Who sends `operation`: the owner of the account a transfer debits or a read
    /// reads, when that user is enrolled; `None` for the admin.
    pub fn sender_of(&self, operation: &Operation) -> Option<i64> {
        let user = match *operation {
            Operation::Transfer { from, .. } => from,
            Operation::Balance { user } | Operation::History { user } => user,
            Operation::Credit { .. } | Operation::Debit { .. } | Operation::Hold { .. } | Operation::Batch { .. } => {
                return None;
            }
        };
        self.owners.as_ref()?.is_enrolled(user).then_some(user)
    }

    pub fn admin_id(&self) -> i64 {
        self.admin_id
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn current_token(&self) -> (Arc<str>, u64) {
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
        token.value = Arc::from(value);
        token.generation += 1;
        Ok(())
    }

    /// Send one request under `/api/v1` (or at the root for paths starting `/healthz`,
    /// `/readyz`, `/metrics`) as the admin, logging in again on 401.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, TransportError> {
        self.send_as(None, method, path, body, idempotency_key).await
    }

    /// [`ApiClient::send`] as `sender` (an enrolled user, see [`ApiClient::sender_of`])
    /// or, with `None`, as the admin. A 401 to a user's token has the tester sign them a
    /// new one; to the admin's, log in again.
    pub async fn send_as(
        &self,
        sender: Option<i64>,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, TransportError> {
        let body = body.map(|body| serde_json::to_vec(body).expect("a JSON value serializes"));
        let owner = sender.and_then(|user| Some((user, self.owners.as_ref()?)));
        let mut answer = None;
        for _ in 0..=RELOGIN_ATTEMPTS_MAX {
            // A user not enrolled is acted for by the admin, whose token a 401 renews.
            let sent_as = owner.and_then(|(user, owners)| Some((user, owners, owners.token(user)?)));
            let (token, generation) = match &sent_as {
                Some((_, _, token)) => (Arc::clone(token), 0),
                None => self.current_token().await,
            };
            let reply = self
                .transport
                .send(&Request {
                    method: method.as_str(),
                    path,
                    token: &token,
                    idempotency_key,
                    body: body.as_deref(),
                })
                .await?;
            let reply = Answer::read(reply.status, reply.retry_after, reply.replayed, reply.body);
            if reply.status != 401 {
                return Ok(reply);
            }
            answer = Some(reply);
            match sent_as {
                Some((user, owners, _)) => owners.renew(user, &token),
                None => self.refresh_token(generation).await?,
            }
        }
        Ok(answer.expect("the loop ran at least once"))
    }

    /// `GET` a path outside `/api/v1` (probes, metrics) as text.
    pub async fn get_root(&self, path: &str) -> Result<(u16, String), TransportError> {
        let response = self.http.get(format!("{}{path}", self.base_url)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The request for an operation: method, path and body. For a hold, the placement
    /// (see [`ApiClient::settle_request`] for the settlement).
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
            Operation::Hold {
                from, to, amount_minor, ..
            } => (
                Method::POST,
                "/transactions/transfer".into(),
                Some(json!({
                    "from_user_id": from,
                    "to_user_id": to,
                    "amount": format_minor(amount_minor),
                    "pending": true,
                    "expires_in": HOLD_EXPIRES_IN_SECONDS,
                })),
            ),
            Operation::Batch { ref legs } => (
                Method::POST,
                "/transactions/batch".into(),
                Some(json!({
                    "legs": legs
                        .iter()
                        .map(|leg| json!({
                            "type": "transfer",
                            "from_user_id": leg.from,
                            "to_user_id": leg.to,
                            "amount": format_minor(leg.amount_minor),
                        }))
                        .collect::<Vec<_>>()
                })),
            ),
        }
    }

    /// The request settling the hold `hold`.
    pub fn settle_request(hold: Uuid, settlement: HoldSettlement) -> (reqwest::Method, String, Option<Value>) {
        let (action, body) = match settlement {
            HoldSettlement::Post => ("post", json!({})),
            HoldSettlement::PostPartial { amount_minor } => ("post", json!({ "amount": format_minor(amount_minor) })),
            HoldSettlement::Void => ("void", json!({})),
        };
        (
            reqwest::Method::POST,
            format!("/transactions/{hold}/{action}"),
            Some(body),
        )
    }

    pub async fn perform(&self, operation: &Operation, key: Option<&str>) -> Result<Answer, TransportError> {
        let (method, path, body) = Self::request_for(operation);
        self.send_as(self.sender_of(operation), method, &path, body.as_ref(), key)
            .await
    }

    /// An account's balance and version from `/balances/current/{id}`, read by its
    /// owner when enrolled.
    pub async fn balance(&self, user: i64) -> anyhow::Result<(i64, u64)> {
        let answer = self.perform(&Operation::Balance { user }, None).await?;
        if answer.status != 200 {
            bail!(
                "GET /balances/current/{user} answered {} {}",
                answer.status,
                answer.body()
            );
        }
        let balance = answer.body()["balance"]
            .as_str()
            .context("a balance string")
            .and_then(parse_signed)?;
        let version = answer.body()["version"].as_u64().context("a version")?;
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

/// One write the run sent. For a hold, the placement (its answer, key and attempts) and
/// its [`SettlementRecord`]; for a batch, the batch as a whole (the answer's id is the
/// batch id) and its [`LegRecord`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub sequence: u64,
    pub kind: OperationKind,
    /// The source account; 0 (external) for a credit, and for a batch.
    pub from: i64,
    /// The target account; 0 (external) for a debit, and for a batch.
    pub to: i64,
    /// The amount moved; for a hold, the amount held; for a batch, its legs' total.
    pub amount_minor: i64,
    pub key: Option<String>,
    /// The user the write was sent as, when not the admin (the owner of the account a
    /// transfer debits): its idempotency key is scoped to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<i64>,
    pub attempts: u32,
    #[serde(flatten)]
    pub answer: WriteAnswer,
    /// A hold's post or void, sent once the placement was answered 201.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<SettlementRecord>,
    /// A batch's legs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<LegRecord>,
}

/// The post or void of a hold, and what the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    pub settle: HoldSettlement,
    pub key: Option<String>,
    pub attempts: u32,
    /// `completed` (200) carries the hold's id; `refused` a post whose credit was
    /// refused and whose capture was refunded (422, `rolled_back`).
    #[serde(flatten)]
    pub answer: WriteAnswer,
}

/// One transfer of a batch, with the id the answer gave it (201 or 422).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRecord {
    pub from: i64,
    pub to: i64,
    pub amount_minor: i64,
    pub id: Option<Uuid>,
}

impl WriteRecord {
    fn new(sequence: u64, operation: &Operation, key: Option<String>) -> Option<WriteRecord> {
        let mut legs = Vec::new();
        let (kind, from, to, amount_minor) = match *operation {
            Operation::Transfer { from, to, amount_minor } => (OperationKind::Transfer, from, to, amount_minor),
            Operation::Credit { user, amount_minor } => (OperationKind::Credit, 0, user, amount_minor),
            Operation::Debit { user, amount_minor } => (OperationKind::Debit, user, 0, amount_minor),
            Operation::Hold {
                from, to, amount_minor, ..
            } => (OperationKind::Hold, from, to, amount_minor),
            Operation::Batch { legs: ref batch } => {
                legs = batch
                    .iter()
                    .map(|leg| LegRecord {
                        from: leg.from,
                        to: leg.to,
                        amount_minor: leg.amount_minor,
                        id: None,
                    })
                    .collect();
                let total = batch.iter().map(|leg| leg.amount_minor).sum();
                (OperationKind::Batch, 0, 0, total)
            }
            Operation::History { .. } | Operation::Balance { .. } => return None,
        };
        Some(WriteRecord {
            sequence,
            kind,
            from,
            to,
            amount_minor,
            key,
            initiator: None,
            attempts: 0,
            answer: WriteAnswer::Unknown {
                last_error: "not sent".into(),
            },
            settlement: None,
            legs,
        })
    }
}

/// Records per chunk of the [`WriteLog`]: about a megabyte.
const WRITE_LOG_CHUNK: usize = 4_096;

/// Every write of a run and what the client was told, for the verifier.
///
/// Kept in chunks of [`WRITE_LOG_CHUNK`] records, never in one growing vector: a
/// vector doubling under the lock copies every record logged so far, and with tens of
/// thousands logged that copy held up every request answered meanwhile by tens of
/// milliseconds, at each power of two (an open loop at 3,100 requests/s showed its worst
/// second at the 32,768th write, at 2,500/s it moved with it).
#[derive(Debug, Default)]
pub struct WriteLog {
    chunks: Mutex<Vec<Vec<WriteRecord>>>,
}

impl WriteLog {
    pub fn push(&self, record: WriteRecord) {
        let mut chunks = self.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < WRITE_LOG_CHUNK => chunk.push(record),
            _ => {
                let mut chunk = Vec::with_capacity(WRITE_LOG_CHUNK);
                chunk.push(record);
                chunks.push(chunk);
            }
        }
    }

    /// The writes in the order they were sent.
    pub fn take(&self) -> Vec<WriteRecord> {
        let chunks = std::mem::take(&mut *self.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let mut writes: Vec<WriteRecord> = chunks.into_iter().flatten().collect();
        writes.sort_by_key(|write| write.sequence);
        writes
    }
}

/// The retry policy of keyed runs.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (a hold's placement and settlement
    /// each have as many).
    pub attempts_max: u32,
    /// The longest one request keeps retrying, from its first attempt: bounds the wait
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

    /// The key of the settlement of the hold placed by operation `sequence`: its own
    /// key, so that a retried post or void is told apart from the placement.
    fn settlement_key_for(&self, sequence: u64) -> Option<String> {
        self.key_prefix
            .as_ref()
            .map(|prefix| format!("{prefix}-{sequence}-settle"))
    }
}

/// How a write's answer is filed in the log.
fn write_answer(answer: &Answer) -> WriteAnswer {
    filed_answer(answer, "transaction", "id")
}

/// How a batch's answer is filed in the log: the batch id stands for the batch.
fn batch_answer(answer: &Answer) -> WriteAnswer {
    filed_answer(answer, "batch", "batch_id")
}

/// File `answer` by its record (see [`Answer::record`]) and that record's id.
fn filed_answer(answer: &Answer, extension: &str, id_field: &str) -> WriteAnswer {
    let id = if (200..=299).contains(&answer.status) {
        answer.identity(id_field).and_then(|id| Uuid::parse_str(&id).ok())
    } else {
        answer
            .record(extension)
            .and_then(|record| record.get(id_field))
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
    };
    match (answer.status, id) {
        (200..=299, Some(id)) => WriteAnswer::Completed {
            id,
            replayed: answer.replayed,
        },
        (422, Some(id)) => WriteAnswer::Refused {
            id,
            status: answer
                .record(extension)
                .and_then(|record| record["status"].as_str())
                .unwrap_or("?")
                .to_string(),
            code: answer.code_or_status(),
        },
        // Refused before anything was recorded: rate limits, validation, a reused key,
        // an unknown user; for a settlement, a hold no longer pending (409).
        (400..=499, _) => WriteAnswer::NotApplied {
            code: answer.code_or_status(),
        },
        _ => WriteAnswer::Unknown {
            last_error: answer.code_or_status(),
        },
    }
}

/// The ids a batch answer gave its legs, in leg order.
fn batch_leg_ids(answer: &Answer) -> Vec<Option<Uuid>> {
    answer
        .record("batch")
        .and_then(|batch| batch["legs"].as_array())
        .map(|legs| {
            legs.iter()
                .map(|leg| leg["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// One request sent until it got a final answer, or the retries ran out.
#[derive(Debug)]
struct Exchange {
    class: OutcomeClass,
    /// What the answers said about the write (meaningless for a read).
    answer: WriteAnswer,
    /// The last answer, when there was one.
    last: Option<Answer>,
    attempts: u32,
}

impl HttpExecutor {
    /// Send one request, retrying what may be retried (see the module header), and
    /// file its answer with `file`. Failed attempts are added to `attempt_errors`.
    async fn exchange(
        &self,
        sender: Option<i64>,
        request: &(reqwest::Method, String, Option<Value>),
        key: Option<&str>,
        is_write: bool,
        file: fn(&Answer) -> WriteAnswer,
        attempt_errors: &mut Vec<String>,
    ) -> Exchange {
        let (method, path, body) = request;
        let retrying = self.key_prefix.is_some();
        let started = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        let mut exchange = Exchange {
            class: OutcomeClass::Unknown("not sent".into()),
            answer: WriteAnswer::Unknown {
                last_error: "not sent".into(),
            },
            last: None,
            attempts: 0,
        };
        // Set once an attempt may have been applied without the client knowing: a later
        // answer refusing a retry (429) then proves nothing about the first.
        let mut uncertain = false;
        for attempt in 1..=self.retry.attempts_max.max(1) {
            exchange.attempts = attempt;
            let pause;
            match self
                .client
                .send_as(sender, method.clone(), path, body.as_ref(), key)
                .await
            {
                Err(error) => {
                    uncertain = true;
                    attempt_errors.push(error.kind.to_string());
                    // A read that got no answer simply failed; a write's outcome is open.
                    exchange.class = if is_write {
                        OutcomeClass::Unknown(error.kind.to_string())
                    } else {
                        OutcomeClass::Failed(error.kind.to_string())
                    };
                    exchange.answer = WriteAnswer::Unknown {
                        last_error: error.to_string(),
                    };
                    pause = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Ok(answer) => {
                    exchange.answer = file(&answer);
                    let code = answer.code_or_status();
                    let status = answer.status;
                    // Only a 422 is asked what it recorded (which reads the whole body).
                    let recorded = status == 422 && answer.recorded().is_some();
                    let retry_after = answer.retry_after;
                    exchange.last = Some(answer);
                    match status {
                        200..=299 => {
                            exchange.class = OutcomeClass::Completed;
                            break;
                        }
                        422 if recorded => {
                            exchange.class = OutcomeClass::Refused(code);
                            break;
                        }
                        429 | 503 => {
                            attempt_errors.push(code.clone());
                            uncertain |= is_write && status == 503;
                            exchange.class = if is_write && status == 503 {
                                OutcomeClass::Unknown(code)
                            } else {
                                OutcomeClass::Failed(code)
                            };
                            pause = retry_after.unwrap_or(backoff).min(RETRY_AFTER_MAX).max(BACKOFF_FIRST);
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                        _ => {
                            attempt_errors.push(code.clone());
                            exchange.class = if status >= 500 && is_write {
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
        if is_write {
            if uncertain && let WriteAnswer::NotApplied { code } = &exchange.answer {
                exchange.answer = WriteAnswer::Unknown {
                    last_error: format!("{code} after an unanswered attempt"),
                };
            }
            if matches!(exchange.answer, WriteAnswer::Unknown { .. }) {
                uncertain = true;
            }
            if uncertain
                && exchange.class != OutcomeClass::Completed
                && !matches!(exchange.class, OutcomeClass::Refused(_))
            {
                exchange.class = OutcomeClass::Unknown(match &exchange.class {
                    OutcomeClass::Unknown(code) | OutcomeClass::Failed(code) => code.clone(),
                    _ => unreachable!("completed and refused are excluded"),
                });
            }
        }
        exchange
    }

    /// A transfer, credit, debit or read: one request.
    async fn single(&self, sequence: u64, operation: Operation) -> Outcome {
        let is_write = operation.kind().is_write();
        let key = if is_write { self.key_for(sequence) } else { None };
        let mut attempt_errors = Vec::new();
        let request = ApiClient::request_for(&operation);
        let sender = self.client.sender_of(&operation);
        let exchange = self
            .exchange(
                sender,
                &request,
                key.as_deref(),
                is_write,
                write_answer,
                &mut attempt_errors,
            )
            .await;
        if let Some(mut record) = WriteRecord::new(sequence, &operation, key) {
            record.initiator = sender;
            record.attempts = exchange.attempts;
            record.answer = exchange.answer;
            self.writes.push(record);
        }
        Outcome {
            class: exchange.class,
            attempt_errors,
            steps: Vec::new(),
        }
    }

    /// A hold: placed, then (once the placement is answered 201) posted or voided. The
    /// operation ends as its last request did.
    async fn hold(&self, sequence: u64, operation: Operation) -> Outcome {
        let Operation::Hold { settlement, .. } = operation else {
            unreachable!("only holds are placed")
        };
        let key = self.key_for(sequence);
        let mut attempt_errors = Vec::new();
        let placement = self
            .exchange(
                None,
                &ApiClient::request_for(&operation),
                key.as_deref(),
                true,
                write_answer,
                &mut attempt_errors,
            )
            .await;
        let mut record = WriteRecord::new(sequence, &operation, key).expect("a hold is a write");
        record.attempts = placement.attempts;
        record.answer = placement.answer;
        let mut steps = Vec::new();
        let class = match (&placement.class, &record.answer) {
            (OutcomeClass::Completed, WriteAnswer::Completed { id, .. }) => {
                steps.push((Step::HoldPlaced, 1));
                let settlement_key = self.settlement_key_for(sequence);
                let settled = self
                    .exchange(
                        None,
                        &ApiClient::settle_request(*id, settlement),
                        settlement_key.as_deref(),
                        true,
                        write_answer,
                        &mut attempt_errors,
                    )
                    .await;
                if settled.class == OutcomeClass::Completed {
                    steps.push((
                        match settlement {
                            HoldSettlement::Post => Step::HoldPosted,
                            HoldSettlement::PostPartial { .. } => Step::HoldPostedInPart,
                            HoldSettlement::Void => Step::HoldVoided,
                        },
                        1,
                    ));
                }
                record.settlement = Some(SettlementRecord {
                    settle: settlement,
                    key: settlement_key,
                    attempts: settled.attempts,
                    answer: settled.answer,
                });
                settled.class
            }
            // A 2xx without a transaction id: the hold cannot be settled.
            (OutcomeClass::Completed, _) => OutcomeClass::Failed("no_hold_id".into()),
            (class, _) => class.clone(),
        };
        self.writes.push(record);
        Outcome {
            class,
            attempt_errors,
            steps,
        }
    }

    /// An atomic batch: one request; its legs' ids are recorded from the answer.
    async fn batch(&self, sequence: u64, operation: Operation) -> Outcome {
        let key = self.key_for(sequence);
        let mut attempt_errors = Vec::new();
        let exchange = self
            .exchange(
                None,
                &ApiClient::request_for(&operation),
                key.as_deref(),
                true,
                batch_answer,
                &mut attempt_errors,
            )
            .await;
        let mut record = WriteRecord::new(sequence, &operation, key).expect("a batch is a write");
        record.attempts = exchange.attempts;
        record.answer = exchange.answer;
        let mut steps = Vec::new();
        if let (WriteAnswer::Completed { .. } | WriteAnswer::Refused { .. }, Some(answer)) =
            (&record.answer, &exchange.last)
        {
            for (leg, id) in record.legs.iter_mut().zip(batch_leg_ids(answer)) {
                leg.id = id;
            }
            let legs = record.legs.len() as u64;
            steps.push(match record.answer {
                WriteAnswer::Completed { .. } => (Step::BatchLegsApplied, legs),
                _ => (Step::BatchLegsRefused, legs),
            });
        }
        self.writes.push(record);
        Outcome {
            class: exchange.class,
            attempt_errors,
            steps,
        }
    }
}

impl Executor for HttpExecutor {
    async fn execute(&self, sequence: u64, operation: Operation) -> Outcome {
        match operation.kind() {
            OperationKind::Hold => self.hold(sequence, operation).await,
            OperationKind::Batch => self.batch(sequence, operation).await,
            _ => self.single(sequence, operation).await,
        }
    }
}

/// Parse a decimal amount for a command-line flag.
pub fn amount_flag(text: &str) -> Result<i64, String> {
    parse_minor(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::BatchLeg;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One scripted answer of the fake server; `None` closes the connection unanswered.
    type Scripted = Option<(u16, Value)>;

    /// The requests the fake server saw: path and idempotency key.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A fake Tally on the loopback: answers every login, and each other request with the
    /// next scripted answer, recording the path and the idempotency key it carried.
    struct FakeTally {
        base_url: String,
        seen: Seen,
        /// The JSON body of each request in `seen` (`null` without one).
        bodies: Arc<Mutex<Vec<Value>>>,
        /// The Authorization header of each request in `seen`.
        authorizations: Arc<Mutex<Vec<String>>>,
        /// Logins answered.
        logins: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn fake_tally(script: Vec<Scripted>) -> FakeTally {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let logins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (recorded, recorded_bodies) = (seen.clone(), bodies.clone());
        let (recorded_authorizations, counted_logins) = (authorizations.clone(), logins.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (seen, bodies, script) = (recorded.clone(), recorded_bodies.clone(), script.clone());
                let (authorizations, logins) = (recorded_authorizations.clone(), counted_logins.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    // Headers, then the body by its content-length.
                    let head_end = loop {
                        let read = stream.read(&mut buffer).await.unwrap();
                        if read == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..read]);
                        if let Some(end) = request.windows(4).position(|window| window == b"\r\n\r\n") {
                            break end + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines().find_map(|line| {
                            let (key, value) = line.split_once(':')?;
                            key.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
                        })
                    };
                    let length: usize = header("content-length")
                        .and_then(|value| value.parse().ok())
                        .unwrap_or(0);
                    while request.len() < head_end + length {
                        let read = stream.read(&mut buffer).await.unwrap();
                        request.extend_from_slice(&buffer[..read]);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let answer = if path == "/api/v1/auth/login" {
                        logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Some((200, json!({ "access_token": "token", "user": { "id": 7 } })))
                    } else {
                        authorizations
                            .lock()
                            .unwrap()
                            .push(header("authorization").unwrap_or_default());
                        seen.lock().unwrap().push((path, header("idempotency-key")));
                        bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&request[head_end..head_end + length]).unwrap_or(Value::Null));
                        script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .expect("a scripted answer per request")
                    };
                    let Some((status, body)) = answer else {
                        return;
                    };
                    let body = body.to_string();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         retry-after: 0\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        FakeTally {
            base_url,
            seen,
            bodies,
            authorizations,
            logins,
        }
    }

    fn transfer_from(from: i64) -> Operation {
        Operation::Transfer {
            from,
            to: 2,
            amount_minor: 100,
        }
    }

    /// A client of `fake` holding a token for user 5 only.
    async fn client_with_owner_5(fake: &FakeTally) -> ApiClient {
        let owners = OwnerTokens::new(
            "a-secret-a-secret-a-secret-0123456789",
            crate::owners::DEFAULT_ISSUER,
            crate::owners::DEFAULT_AUDIENCE,
            crate::owners::TOKEN_LIFETIME,
        );
        owners.enroll([(5, 0)]);
        ApiClient::login(&fake.base_url, "admin", "password", Duration::from_secs(5))
            .await
            .unwrap()
            .with_owners(owners)
    }

    #[tokio::test]
    async fn an_enrolled_owner_sends_their_own_transfer_and_a_401_signs_them_a_new_token() {
        let fake = fake_tally(vec![Some((401, json!({}))), Some((201, json!({ "id": Uuid::nil() })))]).await;
        let client = client_with_owner_5(&fake).await;
        assert_eq!(client.sender_of(&transfer_from(5)), Some(5));
        let answer = client.perform(&transfer_from(5), None).await.unwrap();
        assert_eq!(answer.status, 201);
        let sent = fake.authorizations.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|header| header.starts_with("Bearer ey")), "{sent:?}");
        assert_ne!(sent[0], sent[1], "the refused token was replaced");
        assert_eq!(
            fake.logins.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "no admin login"
        );
    }

    #[tokio::test]
    async fn a_user_not_enrolled_is_acted_for_by_the_admin_who_logs_in_again_on_401() {
        let fake = fake_tally(vec![Some((401, json!({}))), Some((201, json!({ "id": Uuid::nil() })))]).await;
        let client = client_with_owner_5(&fake).await;
        assert_eq!(client.sender_of(&transfer_from(9)), None);
        let answer = client
            .send_as(Some(9), reqwest::Method::POST, "/transactions/transfer", None, None)
            .await
            .unwrap();
        assert_eq!(answer.status, 201);
        assert_eq!(*fake.authorizations.lock().unwrap(), ["Bearer token", "Bearer token"]);
        assert_eq!(
            fake.logins.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the admin logged in again"
        );
    }

    async fn executor(fake: &FakeTally, keys: bool, attempts_max: u32) -> HttpExecutor {
        let client = ApiClient::login(&fake.base_url, "admin", "password", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(client.admin_id(), 7);
        HttpExecutor {
            client: Arc::new(client),
            key_prefix: keys.then(|| "run-test".to_string()),
            retry: RetryPolicy {
                attempts_max,
                retry_time_max: Duration::from_secs(10),
            },
            writes: Arc::new(WriteLog::default()),
        }
    }

    fn logged(sequence: u64) -> WriteRecord {
        WriteRecord {
            sequence,
            kind: OperationKind::Transfer,
            from: 1,
            to: 2,
            amount_minor: 1,
            key: None,
            initiator: None,
            attempts: 1,
            answer: WriteAnswer::NotApplied { code: "x".into() },
            settlement: None,
            legs: Vec::new(),
        }
    }

    #[test]
    fn the_write_log_never_moves_what_it_holds_and_gives_it_all_back_in_order() {
        let log = WriteLog::default();
        log.push(logged(1));
        let first = {
            let chunks = log.chunks.lock().unwrap();
            std::ptr::from_ref(&chunks[0][0])
        };
        let total = 3 * WRITE_LOG_CHUNK as u64 + 5;
        for sequence in (2..=total).rev() {
            log.push(logged(sequence));
        }
        {
            let chunks = log.chunks.lock().unwrap();
            // A growing vector would have moved its first record several times by now.
            assert_eq!(std::ptr::from_ref(&chunks[0][0]), first);
            assert_eq!(chunks.len(), 4);
            assert!(chunks.iter().all(|chunk| chunk.capacity() == WRITE_LOG_CHUNK));
        }
        let writes = log.take();
        assert_eq!(writes.len() as u64, total);
        assert!(
            writes
                .iter()
                .zip(1..)
                .all(|(write, sequence)| write.sequence == sequence)
        );
        assert!(log.take().is_empty(), "taking empties the log");
    }

    const TRANSFER: Operation = Operation::Transfer {
        from: 1,
        to: 2,
        amount_minor: 500,
    };

    #[tokio::test]
    async fn a_keyed_write_is_retried_with_the_same_key_until_it_gets_an_answer() {
        let id = Uuid::now_v7();
        let fake = fake_tally(vec![
            Some((503, json!({ "code": "unavailable" }))),
            None,
            Some((201, json!({ "id": id.to_string(), "status": "completed" }))),
        ])
        .await;
        let executor = executor(&fake, true, 5).await;
        let outcome = executor.execute(41, TRANSFER).await;
        assert_eq!(outcome.class, OutcomeClass::Completed);
        assert_eq!(outcome.attempt_errors, ["unavailable", "transport_other"]);
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        for (path, key) in &seen {
            assert_eq!(path, "/api/v1/transactions/transfer");
            assert_eq!(
                key.as_deref(),
                Some("run-test-41"),
                "every attempt carries the same key"
            );
        }
        let writes = executor.writes.take();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].attempts, 3);
        assert_eq!(writes[0].answer, WriteAnswer::Completed { id, replayed: false });
    }

    #[tokio::test]
    async fn without_keys_a_write_is_sent_once_and_a_503_leaves_it_unknown() {
        let fake = fake_tally(vec![Some((503, json!({ "code": "overloaded" })))]).await;
        let executor = executor(&fake, false, 5).await;
        let outcome = executor.execute(0, TRANSFER).await;
        assert_eq!(outcome.class, OutcomeClass::Unknown("overloaded".into()));
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen, [("/api/v1/transactions/transfer".to_string(), None)]);
        let writes = executor.writes.take();
        assert_eq!(
            writes[0].answer,
            WriteAnswer::Unknown {
                last_error: "overloaded".into()
            }
        );
    }

    #[tokio::test]
    async fn a_refusal_after_a_lost_answer_does_not_prove_the_write_was_not_applied() {
        // The first attempt may have been applied; a 429 on the retry says nothing about it.
        let fake = fake_tally(vec![None, Some((429, json!({ "code": "rate_limited" })))]).await;
        let executor = executor(&fake, true, 2).await;
        let outcome = executor.execute(3, TRANSFER).await;
        assert_eq!(outcome.class, OutcomeClass::Unknown("rate_limited".into()));
        let writes = executor.writes.take();
        assert!(
            matches!(&writes[0].answer, WriteAnswer::Unknown { last_error } if last_error.contains("unanswered")),
            "{:?}",
            writes[0].answer
        );
    }

    #[tokio::test]
    async fn a_business_refusal_is_an_answer_not_an_error_and_is_not_retried() {
        let id = Uuid::now_v7();
        let fake = fake_tally(vec![Some((
            422,
            json!({ "code": "insufficient_funds", "transaction": { "id": id.to_string(), "status": "failed" } }),
        ))])
        .await;
        let executor = executor(&fake, true, 5).await;
        let outcome = executor.execute(9, TRANSFER).await;
        assert_eq!(outcome.class, OutcomeClass::Refused("insufficient_funds".into()));
        assert!(outcome.attempt_errors.is_empty());
        assert_eq!(fake.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn reads_carry_no_key_and_a_lost_answer_is_a_failure() {
        let fake = fake_tally(vec![None]).await;
        let executor = executor(&fake, false, 5).await;
        let outcome = executor.execute(0, Operation::Balance { user: 4 }).await;
        assert_eq!(outcome.class, OutcomeClass::Failed("transport_other".into()));
        assert_eq!(
            fake.seen.lock().unwrap().clone(),
            [("/api/v1/balances/current/4".to_string(), None)]
        );
        assert!(executor.writes.take().is_empty(), "reads are not in the write log");
    }

    const HOLD: Operation = Operation::Hold {
        from: 1,
        to: 2,
        amount_minor: 500,
        settlement: HoldSettlement::PostPartial { amount_minor: 120 },
    };

    #[tokio::test]
    async fn a_hold_is_placed_then_settled_each_request_retried_with_its_own_key() {
        let id = Uuid::now_v7();
        let hold = |status: &str, amount: &str| json!({ "id": id.to_string(), "status": status, "amount": amount });
        let fake = fake_tally(vec![
            None,
            Some((201, hold("pending", "5.00"))),
            Some((503, json!({ "code": "unavailable" }))),
            Some((200, hold("posted", "1.20"))),
        ])
        .await;
        let executor = executor(&fake, true, 5).await;
        let outcome = executor.execute(5, HOLD).await;
        assert_eq!(outcome.class, OutcomeClass::Completed);
        assert_eq!(outcome.attempt_errors, ["transport_other", "unavailable"]);
        assert_eq!(outcome.steps, [(Step::HoldPlaced, 1), (Step::HoldPostedInPart, 1)]);
        let placement = (
            "/api/v1/transactions/transfer".to_string(),
            Some("run-test-5".to_string()),
        );
        let post = (
            format!("/api/v1/transactions/{id}/post"),
            Some("run-test-5-settle".to_string()),
        );
        assert_eq!(
            fake.seen.lock().unwrap().clone(),
            [placement.clone(), placement, post.clone(), post]
        );
        let bodies = fake.bodies.lock().unwrap().clone();
        assert_eq!(
            bodies[0],
            json!({ "from_user_id": 1, "to_user_id": 2, "amount": "5.00", "pending": true,
                    "expires_in": HOLD_EXPIRES_IN_SECONDS })
        );
        assert_eq!(bodies[3], json!({ "amount": "1.20" }));
        let writes = executor.writes.take();
        assert_eq!(writes.len(), 1, "a hold is one write");
        let write = &writes[0];
        assert_eq!(
            (write.kind, write.from, write.to, write.amount_minor, write.attempts),
            (OperationKind::Hold, 1, 2, 500, 2)
        );
        assert_eq!(write.answer, WriteAnswer::Completed { id, replayed: false });
        let settlement = write.settlement.as_ref().expect("the settlement is recorded");
        assert_eq!(settlement.settle, HoldSettlement::PostPartial { amount_minor: 120 });
        assert_eq!(settlement.attempts, 2);
        assert_eq!(settlement.answer, WriteAnswer::Completed { id, replayed: false });
    }

    #[tokio::test]
    async fn a_refused_hold_is_not_settled_and_a_lost_void_leaves_the_hold_unknown() {
        let id = Uuid::now_v7();
        let fake = fake_tally(vec![Some((
            422,
            json!({ "code": "insufficient_funds", "transaction": { "id": id.to_string(), "status": "failed" } }),
        ))])
        .await;
        let refusing = executor(&fake, false, 5).await;
        let outcome = refusing.execute(0, HOLD).await;
        assert_eq!(outcome.class, OutcomeClass::Refused("insufficient_funds".into()));
        assert!(outcome.steps.is_empty());
        assert_eq!(fake.seen.lock().unwrap().len(), 1, "nothing to settle");
        assert_eq!(refusing.writes.take()[0].settlement, None);

        let fake = fake_tally(vec![
            Some((201, json!({ "id": id.to_string(), "status": "pending" }))),
            None,
        ])
        .await;
        let executor = executor(&fake, false, 5).await;
        let void = Operation::Hold {
            from: 1,
            to: 2,
            amount_minor: 500,
            settlement: HoldSettlement::Void,
        };
        let outcome = executor.execute(1, void).await;
        assert_eq!(outcome.class, OutcomeClass::Unknown("transport_other".into()));
        assert_eq!(outcome.steps, [(Step::HoldPlaced, 1)]);
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen[1], (format!("/api/v1/transactions/{id}/void"), None));
        let writes = executor.writes.take();
        let settlement = writes[0].settlement.as_ref().unwrap();
        assert!(matches!(settlement.answer, WriteAnswer::Unknown { .. }));
        assert_eq!(writes[0].answer, WriteAnswer::Completed { id, replayed: false });
    }

    fn batch_view(batch: Uuid, status: &str, legs: &[Uuid]) -> Value {
        json!({
            "batch_id": batch.to_string(),
            "status": status,
            "legs": legs.iter().map(|id| json!({ "id": id.to_string() })).collect::<Vec<_>>(),
        })
    }

    #[tokio::test]
    async fn a_batch_is_one_keyed_request_and_its_legs_ids_are_recorded() {
        let (batch, legs) = (Uuid::now_v7(), [Uuid::now_v7(), Uuid::now_v7()]);
        let fake = fake_tally(vec![
            Some((503, json!({ "code": "overloaded" }))),
            Some((201, batch_view(batch, "completed", &legs))),
            Some((
                422,
                json!({ "code": "insufficient_funds", "batch": batch_view(batch, "failed", &legs) }),
            )),
        ])
        .await;
        let executor = executor(&fake, true, 5).await;
        let operation = Operation::Batch {
            legs: vec![
                BatchLeg {
                    from: 1,
                    to: 2,
                    amount_minor: 30,
                },
                BatchLeg {
                    from: 3,
                    to: 4,
                    amount_minor: 70,
                },
            ],
        };
        let outcome = executor.execute(8, operation.clone()).await;
        assert_eq!(outcome.class, OutcomeClass::Completed);
        assert_eq!(outcome.steps, [(Step::BatchLegsApplied, 2)]);
        let refused = executor.execute(9, operation).await;
        assert_eq!(refused.class, OutcomeClass::Refused("insufficient_funds".into()));
        assert_eq!(refused.steps, [(Step::BatchLegsRefused, 2)]);
        let seen = fake.seen.lock().unwrap().clone();
        let keys: Vec<_> = seen.iter().map(|(_, key)| key.clone().unwrap()).collect();
        assert_eq!(keys, ["run-test-8", "run-test-8", "run-test-9"]);
        assert_eq!(
            fake.bodies.lock().unwrap()[0],
            json!({ "legs": [
                { "type": "transfer", "from_user_id": 1, "to_user_id": 2, "amount": "0.30" },
                { "type": "transfer", "from_user_id": 3, "to_user_id": 4, "amount": "0.70" },
            ]})
        );
        let writes = executor.writes.take();
        assert_eq!(
            (writes[0].kind, writes[0].from, writes[0].to, writes[0].amount_minor),
            (OperationKind::Batch, 0, 0, 100)
        );
        assert_eq!(
            writes[0].answer,
            WriteAnswer::Completed {
                id: batch,
                replayed: false
            }
        );
        let ids: Vec<_> = writes[0].legs.iter().map(|leg| leg.id).collect();
        assert_eq!(ids, legs.map(Some));
        assert_eq!(
            writes[1].answer,
            WriteAnswer::Refused {
                id: batch,
                status: "failed".into(),
                code: "insufficient_funds".into()
            }
        );
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer::read(status, None, false, serde_json::to_vec(&body).unwrap())
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
        let hold = Uuid::now_v7();
        let (method, path, body) = ApiClient::settle_request(hold, HoldSettlement::Post);
        assert_eq!(
            (method, path, body.unwrap()),
            (reqwest::Method::POST, format!("/transactions/{hold}/post"), json!({}))
        );
        let (_, path, body) = ApiClient::settle_request(hold, HoldSettlement::Void);
        assert_eq!((path, body.unwrap()), (format!("/transactions/{hold}/void"), json!({})));
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
