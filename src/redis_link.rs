//! The link to Redis, shared by the rate limiter, the read cache and token revocation.
//!
//! Redis is optional and never on the critical path: every call has a short time limit,
//! and after a failure the link stays open (Redis considered down) for a backoff
//! period during which callers use their in-process fallback at once instead of
//! waiting. The connection manager reconnects by itself; the first successful call
//! after the backoff closes the link again. Transitions are logged once each, and
//! `tally_redis_up` shows the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntGauge, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The longest any single Redis call may take before the request goes on without it.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_millis(100);
/// After a failure, how long callers skip Redis before it is tried again; doubles up to
/// [`BACKOFF_MAX`] while it keeps failing.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct RedisLink {
    /// Prepended to every key and channel: several deployments (or tests) can share one
    /// Redis.
    prefix: Arc<str>,
    manager: ConnectionManager,
    client: redis::Client,
    state: Arc<LinkState>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("up", &self.state.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct LinkState {
    epoch: Instant,
    /// Whether the last call succeeded.
    up: AtomicBool,
    /// Milliseconds after `epoch` before which Redis is not tried.
    retry_at_ms: AtomicU64,
    backoff_ms: AtomicU64,
    call_timeout: Duration,
    up_gauge: IntGauge,
}

impl RedisLink {
    /// A link to `url`, connecting lazily (Redis may be down at start).
    pub fn new(url: &str, prefix: &str, call_timeout: Duration, registry: &Registry) -> anyhow::Result<RedisLink> {
        let client = redis::Client::open(url).map_err(|error| anyhow::anyhow!("REDIS_URL is not usable: {error}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(call_timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(call_timeout))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF_MAX);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let up_gauge = IntGauge::new(
            "tally_redis_up",
            "1 while Redis answers, 0 while Tally runs on its fallbacks",
        )?;
        registry.register(Box::new(up_gauge.clone()))?;
        up_gauge.set(1);
        Ok(RedisLink {
            prefix: Arc::from(prefix),
            manager,
            client,
            state: Arc::new(LinkState {
                epoch: Instant::now(),
                up: AtomicBool::new(true),
                retry_at_ms: AtomicU64::new(0),
                backoff_ms: AtomicU64::new(BACKOFF_MIN.as_millis() as u64),
                call_timeout,
                up_gauge,
            }),
        })
    }

    /// A key (or channel) name in this deployment's namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// A client for connections of its own (publish/subscribe).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.state.epoch.elapsed().as_millis() as u64
    }

    /// Run `call` against Redis, or answer `None` at once while Redis is considered
    /// down, or when the call fails or takes longer than the time limit.
    pub async fn call<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() && self.now_ms() < self.state.retry_at_ms.load(Ordering::Acquire) {
            return None;
        }
        match tokio::time::timeout(self.state.call_timeout, call(self.manager.clone())).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(&error.to_string());
                None
            }
            Err(_) => {
                self.failed("no answer within the time limit");
                None
            }
        }
    }

    fn succeeded(&self) {
        if !self.state.up.swap(true, Ordering::AcqRel) {
            tracing::info!("Redis answers again; shared rate limits, cache and revocations are back");
            self.state
                .backoff_ms
                .store(BACKOFF_MIN.as_millis() as u64, Ordering::Release);
            self.state.up_gauge.set(1);
        }
    }

    fn failed(&self, reason: &str) {
        let backoff = self.state.backoff_ms.load(Ordering::Acquire);
        self.state.retry_at_ms.store(self.now_ms() + backoff, Ordering::Release);
        if self.state.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                reason,
                "Redis is unavailable; using in-process rate limits and revocations, and no cache, until it answers"
            );
            self.state.up_gauge.set(0);
        } else {
            let next = (backoff * 2).min(BACKOFF_MAX.as_millis() as u64);
            self.state.backoff_ms.store(next, Ordering::Release);
        }
    }
}
