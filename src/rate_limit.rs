//! Rate limiting: per client IP on every request, per user on every authenticated one,
//! and a much stricter per-IP budget for login and registration (password guessing is
//! slow by construction).
//!
//! With Redis, budgets are shared by every Tally instance: one Lua script applies GCRA
//! to all the keys of a request atomically, on Redis's clock. Without Redis, or while it
//! is down, the same limits apply per instance (governor's GCRA, in process).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Governor};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::redis_link::RedisLink;

/// Purge idle keys from the in-process limiters every this many checks, so their
/// memory follows the clients active now, not every client ever seen.
const PURGE_EVERY_CHECKS: u64 = 10_000;

/// The budgets a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Ip,
    User,
    Login,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::User => "user",
            Scope::Login => "login",
        }
    }
}

/// A budget: `count` requests per `period` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Limit {
    fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    pub enabled: bool,
    pub ip: Limit,
    pub user: Limit,
    pub login: Limit,
}

impl RateLimits {
    fn limit(&self, scope: Scope) -> Limit {
        match scope {
            Scope::Ip => self.ip,
            Scope::User => self.user,
            Scope::Login => self.login,
        }
    }
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The burst of the tightest budget checked.
    pub limit: u32,
    pub remaining: u32,
    /// When a refused request may be retried.
    pub retry_after: Duration,
}

impl Decision {
    const UNLIMITED: Decision = Decision {
        allowed: true,
        limit: 0,
        remaining: 0,
        retry_after: Duration::ZERO,
    };
}

type Local = Governor<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// GCRA over every key of a request, all or nothing. KEYS: the budgets' keys; ARGV: for
/// each key its emission interval and burst, in microseconds and requests. Returns
/// {allowed, retry after (µs), remaining of the tightest budget, its burst}.
const GCRA_SCRIPT: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local allowed, retry, remaining, limit = 1, 0, -1, 0
local arrivals = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local arrival = tat + interval
  local allow_at = arrival - interval * burst
  if allow_at > now then
    if allowed == 1 or allow_at - now > retry then limit = burst end
    allowed = 0
    if allow_at - now > retry then retry = allow_at - now end
  else
    arrivals[i] = arrival
    local left = math.floor((now - allow_at) / interval)
    if allowed == 1 and (remaining < 0 or left < remaining) then remaining, limit = left, burst end
  end
end
if allowed == 1 then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, string.format('%.0f', arrivals[i]), 'PX', math.ceil((arrivals[i] - now) / 1000) + 1)
  end
end
if allowed == 0 then remaining = 0 end
return {allowed, math.ceil(retry), math.max(remaining, 0), limit}
"#;

pub struct RateLimiter {
    limits: RateLimits,
    redis: Option<RedisLink>,
    script: redis::Script,
    local: [(Scope, Local); 3],
    checks: AtomicU64,
    refused: IntCounterVec,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn quota(limit: Limit) -> Quota {
    let interval = limit.interval().max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(limit.burst.max(1)).expect("a burst of at least one");
    Quota::with_period(interval)
        .expect("a positive interval")
        .allow_burst(burst)
}

impl RateLimiter {
    pub fn new(limits: RateLimits, redis: Option<RedisLink>, registry: &Registry) -> anyhow::Result<RateLimiter> {
        let refused = IntCounterVec::new(
            Opts::new(
                "tally_rate_limited_total",
                "Requests refused by a rate limit, by budget",
            ),
            &["scope"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        for scope in [Scope::Ip, Scope::User, Scope::Login] {
            refused.with_label_values(&[scope.as_str()]);
        }
        let local = |scope: Scope| {
            (
                scope,
                Governor::keyed(quota(limits.limit(scope))).with_middleware::<StateInformationMiddleware>(),
            )
        };
        Ok(RateLimiter {
            limits,
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            local: [local(Scope::Ip), local(Scope::User), local(Scope::Login)],
            checks: AtomicU64::new(0),
            refused,
        })
    }

    pub fn enabled(&self) -> bool {
        self.limits.enabled
    }

    /// Check (and spend from) every `(scope, key)` budget at once.
    pub async fn check(&self, budgets: &[(Scope, &str)]) -> Decision {
        if !self.limits.enabled || budgets.is_empty() {
            return Decision::UNLIMITED;
        }
        let decision = match self.check_shared(budgets).await {
            Some(decision) => decision,
            None => self.check_local(budgets),
        };
        if !decision.allowed {
            let tightest = budgets[0].0;
            self.refused.with_label_values(&[tightest.as_str()]).inc();
        }
        decision
    }

    async fn check_shared(&self, budgets: &[(Scope, &str)]) -> Option<Decision> {
        let redis = self.redis.as_ref()?;
        let mut invocation = self.script.prepare_invoke();
        for (scope, key) in budgets {
            let limit = self.limits.limit(*scope);
            invocation
                .key(redis.key(&format!("rate:{}:{key}", scope.as_str())))
                .arg(limit.interval().as_micros() as u64)
                .arg(limit.burst);
        }
        let answer: Option<(i64, i64, i64, i64)> = redis
            .call(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await;
        answer.map(|(allowed, retry_micros, remaining, limit)| Decision {
            allowed: allowed == 1,
            limit: limit.max(0) as u32,
            remaining: remaining.max(0) as u32,
            retry_after: Duration::from_micros(retry_micros.max(0) as u64),
        })
    }

    fn check_local(&self, budgets: &[(Scope, &str)]) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY_CHECKS == PURGE_EVERY_CHECKS - 1 {
            for (_, limiter) in &self.local {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        let mut decision = Decision {
            allowed: true,
            limit: u32::MAX,
            remaining: u32::MAX,
            retry_after: Duration::ZERO,
        };
        for (scope, key) in budgets {
            let Some((_, limiter)) = self.local.iter().find(|(candidate, _)| candidate == scope) else {
                continue;
            };
            match limiter.check_key(&key.to_string()) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    if remaining < decision.remaining {
                        decision.remaining = remaining;
                        decision.limit = self.limits.limit(*scope).burst;
                    }
                }
                Err(refusal) => {
                    decision.allowed = false;
                    decision.retry_after = decision
                        .retry_after
                        .max(refusal.wait_time_from(DefaultClock::default().now()));
                    decision.limit = self.limits.limit(*scope).burst;
                    decision.remaining = 0;
                }
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(burst: u32) -> RateLimits {
        let limit = Limit {
            count: 1,
            period: Duration::from_secs(60),
            burst,
        };
        RateLimits {
            enabled: true,
            ip: limit,
            user: limit,
            login: limit,
        }
    }

    #[actix_web::test]
    async fn the_in_process_budget_allows_the_burst_then_refuses_with_a_retry_time() {
        let limiter = RateLimiter::new(limits(3), None, &Registry::new()).unwrap();
        for expected_remaining in [2, 1, 0] {
            let decision = limiter.check(&[(Scope::Login, "10.0.0.1")]).await;
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
        }
        let refused = limiter.check(&[(Scope::Login, "10.0.0.1")]).await;
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(10) && refused.retry_after <= Duration::from_secs(60));
        assert!(
            limiter.check(&[(Scope::Login, "10.0.0.2")]).await.allowed,
            "budgets are per key"
        );
    }

    #[actix_web::test]
    async fn disabled_limits_allow_everything() {
        let mut off = limits(1);
        off.enabled = false;
        let limiter = RateLimiter::new(off, None, &Registry::new()).unwrap();
        for _ in 0..10 {
            assert!(limiter.check(&[(Scope::Ip, "x")]).await.allowed);
        }
    }
}
