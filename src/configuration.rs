//! Configuration from the environment (design.md §8), with defaults that work on a
//! laptop. A `.env` file in the working directory is read first when present.
//!
//! Every value is parsed once, here; an invalid one stops start-up with one line that
//! names the variable and what it accepts.

use std::collections::HashMap;
use std::time::Duration;

use tally_actors::{DEFAULT_DATABASE_URL, Durability, EngineConfig, Placement};

use crate::rate_limit::{Limit, RateLimits};

/// Everything the service needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    pub log: LogSettings,
    pub engine: EngineConfig,
    /// How long a graceful stop waits for requests in flight.
    pub shutdown_timeout: Duration,
    pub http: HttpSettings,
    pub auth: AuthConfig,
    /// Created at start when it does not exist yet.
    pub first_admin: Option<FirstAdmin>,
    pub production: bool,
    /// `REDIS_URL`; none: rate limits, cache and revocations run in process.
    pub redis_url: Option<String>,
    /// `TALLY_REDIS_PREFIX`: the namespace of this deployment's keys in Redis.
    pub redis_prefix: String,
    /// The longest one Redis call may take before a request goes on without it.
    pub redis_timeout: Duration,
    pub cache_ttl: Duration,
    /// Entries of the in-process cache (used without Redis).
    pub cache_entries_max: u64,
    pub rate_limits: RateLimits,
}

#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// The longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Origins allowed to call the API from a browser; empty: none; `*`: any.
    pub cors_origins: Vec<String>,
    /// Worker threads of the HTTP server (default: one per core).
    pub workers: Option<usize>,
    /// Headers every response carries, by name (see [`security_headers`]).
    pub security_headers: Vec<(&'static str, String)>,
}

/// The security headers of every response: `X-Content-Type-Options: nosniff` and
/// `Cache-Control: no-store` always (balances must not be cached or sniffed), and the
/// configurable ones: each has a default, `off` leaves it out, and
/// `Strict-Transport-Security` is sent only when `TALLY_HSTS_MAX_AGE_SECONDS` is set
/// (behind TLS).
fn security_headers(env: &Environment) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let mut headers = vec![
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("Cache-Control", "no-store".to_string()),
    ];
    for (variable, header, default) in [
        (
            "TALLY_CONTENT_SECURITY_POLICY",
            "Content-Security-Policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("TALLY_FRAME_OPTIONS", "X-Frame-Options", "DENY"),
        ("TALLY_REFERRER_POLICY", "Referrer-Policy", "no-referrer"),
    ] {
        let value = env.get(variable).map(str::trim).unwrap_or(default);
        if value.eq_ignore_ascii_case("off") {
            continue;
        }
        if actix_web::http::header::HeaderValue::from_str(value).is_err() {
            return Err(ConfigError {
                name: variable,
                value: value.to_string(),
                expected: "a header value (visible ASCII), or off",
            });
        }
        headers.push((header, value.to_string()));
    }
    if env.get("TALLY_HSTS_MAX_AGE_SECONDS").is_some() {
        // 0 is allowed: it tells browsers to forget an earlier policy.
        let seconds: u64 = env.parse("TALLY_HSTS_MAX_AGE_SECONDS", 0, "a whole number of seconds")?;
        headers.push((
            "Strict-Transport-Security",
            format!("max-age={seconds}; includeSubDomains"),
        ));
    }
    Ok(headers)
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `JWT_SECRET`; when absent (development only) a secret is generated once and kept
    /// next to the SQLite file.
    pub jwt_secret: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

#[derive(Clone)]
pub struct FirstAdmin {
    pub username: String,
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for FirstAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstAdmin")
            .field("username", &self.username)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// The shortest JWT secret accepted in production: 256 bits for HS256.
pub const JWT_SECRET_BYTES_MIN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    /// `None`: JSON when standard output is not a terminal, readable otherwise.
    pub format: Option<LogFormat>,
    /// An `EnvFilter` directive such as `info` or `tally=debug,sqlx=warn`.
    pub filter: String,
    /// OTLP/HTTP base endpoint traces are exported to (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// or the Go service's `JAEGER_URL`); none: no exporter, no cost.
    pub otlp_endpoint: Option<String>,
}

/// A variable that could not be used, with what it accepts.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {name}={value:?}: {expected}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The variables, read once; tests pass their own map.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    values: HashMap<String, String>,
}

impl Environment {
    /// The process environment, after loading `.env` if there is one.
    pub fn from_process() -> Self {
        let _ = dotenvy::dotenv();
        Environment {
            values: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment {
            values: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.trim().is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|_| ConfigError {
                name,
                value: value.to_string(),
                expected,
            }),
        }
    }

    fn positive(&self, name: &'static str, default: usize) -> Result<usize, ConfigError> {
        let value = self.parse(name, default, "a positive integer")?;
        if value == 0 {
            return Err(ConfigError {
                name,
                value: "0".into(),
                expected: "a positive integer",
            });
        }
        Ok(value)
    }

    fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let millis: u64 = self.parse(name, default.as_millis() as u64, "a whole number of milliseconds")?;
        Ok(Duration::from_millis(millis))
    }

    fn micros(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let micros: u64 = self.parse(name, default.as_micros() as u64, "a whole number of microseconds")?;
        Ok(Duration::from_micros(micros))
    }
}

impl Settings {
    pub fn from_environment(env: &Environment) -> Result<Settings, ConfigError> {
        let defaults = EngineConfig::default();
        let database_url = env
            .get("DATABASE_URL")
            .or_else(|| env.get("DB_URL"))
            .unwrap_or(DEFAULT_DATABASE_URL)
            .to_string();
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError {
                name: "DATABASE_URL",
                value: database_url,
                expected: "a postgres://, postgresql:// or sqlite: URL",
            });
        }
        let durability = match env.get("TALLY_DURABILITY") {
            None => Durability::Strict,
            Some(value) => Durability::parse(value).ok_or_else(|| ConfigError {
                name: "TALLY_DURABILITY",
                value: value.to_string(),
                expected: "strict or relaxed",
            })?,
        };
        let placement = match env.get("TALLY_ARBITERS") {
            None => defaults.placement,
            Some(_) => Placement::Arbiters(env.positive("TALLY_ARBITERS", 1)?),
        };
        let format = match env.get("LOG_FORMAT") {
            None => None,
            Some(value) => Some(match value.trim().to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "pretty" | "text" => LogFormat::Pretty,
                _ => {
                    return Err(ConfigError {
                        name: "LOG_FORMAT",
                        value: value.to_string(),
                        expected: "json or pretty",
                    });
                }
            }),
        };
        let filter = env
            .get("RUST_LOG")
            .or_else(|| env.get("LOG_LEVEL"))
            .unwrap_or("info,sqlx=warn")
            .to_string();
        let production = match env.get("TALLY_ENV") {
            None => false,
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "production" | "prod" => true,
                "development" | "dev" | "test" => false,
                _ => {
                    return Err(ConfigError {
                        name: "TALLY_ENV",
                        value: value.to_string(),
                        expected: "production or development",
                    });
                }
            },
        };
        let jwt_secret = env.get("JWT_SECRET").map(str::to_string);
        if production
            && jwt_secret
                .as_ref()
                .is_none_or(|secret| secret.len() < JWT_SECRET_BYTES_MIN)
        {
            return Err(ConfigError {
                name: "JWT_SECRET",
                value: "(hidden)".into(),
                expected: "at least 32 bytes of secret in production (TALLY_ENV=production)",
            });
        }
        let first_admin = match (env.get("TALLY_ADMIN_USERNAME"), env.get("TALLY_ADMIN_PASSWORD")) {
            (Some(username), Some(password)) => Some(FirstAdmin {
                username: username.to_string(),
                email: env
                    .get("TALLY_ADMIN_EMAIL")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{username}@tally.invalid")),
                password: password.to_string(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError {
                    name: "TALLY_ADMIN_PASSWORD",
                    value: String::new(),
                    expected: "set together with TALLY_ADMIN_USERNAME",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    name: "TALLY_ADMIN_USERNAME",
                    value: String::new(),
                    expected: "set together with TALLY_ADMIN_PASSWORD",
                });
            }
        };
        let cors_origins = env
            .get("TALLY_CORS_ORIGINS")
            .map(|list| {
                list.split(',')
                    .map(|origin| origin.trim().to_string())
                    .filter(|origin| !origin.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let workers = match env.get("TALLY_HTTP_WORKERS") {
            None => None,
            Some(_) => Some(env.positive("TALLY_HTTP_WORKERS", 1)?),
        };
        let limit =
            |count_name: &'static str, burst_name: &'static str, count: usize, burst: usize, period: Duration| {
                Ok::<_, ConfigError>(Limit {
                    count: env.positive(count_name, count)? as u32,
                    period,
                    burst: env.positive(burst_name, burst)? as u32,
                })
            };
        let rate_limits = RateLimits {
            enabled: match env
                .get("TALLY_RATE_LIMITS")
                .map(|value| value.trim().to_ascii_lowercase())
            {
                None => true,
                Some(value) if value == "on" || value == "true" => true,
                Some(value) if value == "off" || value == "false" => false,
                Some(value) => {
                    return Err(ConfigError {
                        name: "TALLY_RATE_LIMITS",
                        value,
                        expected: "on or off",
                    });
                }
            },
            ip: limit(
                "TALLY_RATE_LIMIT_IP_PER_SECOND",
                "TALLY_RATE_LIMIT_IP_BURST",
                200,
                400,
                Duration::from_secs(1),
            )?,
            user: limit(
                "TALLY_RATE_LIMIT_USER_PER_SECOND",
                "TALLY_RATE_LIMIT_USER_BURST",
                100,
                200,
                Duration::from_secs(1),
            )?,
            login: limit(
                "TALLY_RATE_LIMIT_LOGIN_PER_MINUTE",
                "TALLY_RATE_LIMIT_LOGIN_BURST",
                10,
                10,
                Duration::from_secs(60),
            )?,
        };
        Ok(Settings {
            redis_url: env.get("REDIS_URL").map(str::to_string),
            redis_prefix: env.get("TALLY_REDIS_PREFIX").unwrap_or("tally").to_string(),
            redis_timeout: env.millis("TALLY_REDIS_TIMEOUT_MS", crate::redis_link::CALL_TIMEOUT_DEFAULT)?,
            cache_ttl: Duration::from_secs(env.positive("TALLY_CACHE_TTL_SECONDS", 300)? as u64),
            cache_entries_max: env.positive("TALLY_CACHE_ENTRIES_MAX", 10_000)? as u64,
            rate_limits,
            production,
            first_admin,
            http: HttpSettings {
                request_timeout: Duration::from_secs(env.positive("TALLY_REQUEST_TIMEOUT_SECONDS", 30)? as u64),
                cors_origins,
                workers,
                security_headers: security_headers(env)?,
            },
            auth: AuthConfig {
                jwt_secret,
                issuer: env.get("JWT_ISSUER").unwrap_or("tally").to_string(),
                audience: env.get("JWT_AUDIENCE").unwrap_or("tally-api").to_string(),
                access_ttl: Duration::from_secs(env.positive("JWT_ACCESS_TTL_SECONDS", 15 * 60)? as u64),
                refresh_ttl: Duration::from_secs(env.positive("JWT_REFRESH_TTL_SECONDS", 7 * 24 * 3600)? as u64),
            },
            host: env.get("HOST").unwrap_or("0.0.0.0").to_string(),
            port: env.parse("PORT", 8080, "a port number (0-65535)")?,
            log: LogSettings {
                format,
                filter,
                otlp_endpoint: env
                    .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .or_else(|| env.get("JAEGER_URL"))
                    .map(str::to_string),
            },
            shutdown_timeout: Duration::from_secs(env.parse(
                "TALLY_SHUTDOWN_TIMEOUT_SECONDS",
                30,
                "a whole number of seconds",
            )?),
            engine: EngineConfig {
                database_url,
                durability,
                batch_size_max: env.positive("TALLY_BATCH_SIZE_MAX", defaults.batch_size_max)?,
                flush_delay_max: env.millis("TALLY_FLUSH_DELAY_MS", defaults.flush_delay_max)?,
                under_way_wait_max: env.micros("TALLY_FLUSH_UNDER_WAY_US", defaults.under_way_wait_max)?,
                queue_capacity: env.positive("TALLY_QUEUE_CAPACITY", defaults.queue_capacity)?,
                mailbox_capacity: env.positive("TALLY_MAILBOX_CAPACITY", defaults.mailbox_capacity)?,
                passivation_idle: Duration::from_secs(env.positive(
                    "TALLY_PASSIVATION_IDLE_SECONDS",
                    defaults.passivation_idle.as_secs() as usize,
                )? as u64),
                placement,
                durable_wait_max: env.millis("TALLY_DURABLE_WAIT_MS", defaults.durable_wait_max)?,
                read_connections_max: env.positive("TALLY_DB_CONNECTIONS", defaults.read_connections_max as usize)?
                    as u32,
                sqlite_wal_pages_max: env
                    .positive("TALLY_SQLITE_WAL_PAGES_MAX", defaults.sqlite_wal_pages_max as usize)?
                    .min(u32::MAX as usize) as u32,
                ..defaults
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_environment_gives_a_working_laptop_setup() {
        let settings = Settings::from_environment(&Environment::default()).unwrap();
        assert_eq!(settings.port, 8080);
        assert_eq!(settings.engine.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(settings.engine.durability, Durability::Strict);
    }

    #[test]
    fn db_url_is_accepted_as_the_go_service_named_it() {
        let env = Environment::from_pairs([("DB_URL", "postgres://u@h/db")]);
        assert_eq!(
            Settings::from_environment(&env).unwrap().engine.database_url,
            "postgres://u@h/db"
        );
    }

    #[test]
    fn invalid_values_name_the_variable_and_what_it_accepts() {
        let cases = [
            ("PORT", "eighty", "a port number"),
            ("DATABASE_URL", "mysql://x", "postgres://"),
            ("TALLY_DURABILITY", "sometimes", "strict or relaxed"),
            ("TALLY_BATCH_SIZE_MAX", "0", "positive"),
            ("TALLY_FLUSH_DELAY_MS", "-3", "milliseconds"),
            ("TALLY_FLUSH_UNDER_WAY_US", "0.5", "microseconds"),
            ("TALLY_SQLITE_WAL_PAGES_MAX", "0", "positive"),
            ("LOG_FORMAT", "xml", "json or pretty"),
            ("TALLY_ENV", "staging", "production or development"),
            ("TALLY_ADMIN_USERNAME", "root", "TALLY_ADMIN_PASSWORD"),
            ("TALLY_FRAME_OPTIONS", "DENY\u{7}", "header value"),
            ("TALLY_HSTS_MAX_AGE_SECONDS", "a year", "whole number of seconds"),
        ];
        for (name, value, hint) in cases {
            let error = Settings::from_environment(&Environment::from_pairs([(name, value)])).unwrap_err();
            let line = error.to_string();
            assert!(line.contains(name) && line.contains(hint), "{name}: {line}");
            assert!(!line.contains('\n'), "one line");
        }
    }

    #[test]
    fn security_headers_have_defaults_can_be_changed_or_left_out_and_hsts_is_opt_in() {
        let headers = |pairs: &[(&str, &str)]| {
            let settings = Settings::from_environment(&Environment::from_pairs(pairs.iter().copied())).unwrap();
            settings.http.security_headers.into_iter().collect::<HashMap<_, _>>()
        };
        let defaults = headers(&[]);
        assert_eq!(defaults["X-Frame-Options"], "DENY");
        assert_eq!(defaults["Referrer-Policy"], "no-referrer");
        assert_eq!(defaults["X-Content-Type-Options"], "nosniff");
        assert!(!defaults.contains_key("Strict-Transport-Security"));
        let changed = headers(&[
            ("TALLY_FRAME_OPTIONS", "SAMEORIGIN"),
            ("TALLY_CONTENT_SECURITY_POLICY", "off"),
            ("TALLY_HSTS_MAX_AGE_SECONDS", "31536000"),
        ]);
        assert_eq!(changed["X-Frame-Options"], "SAMEORIGIN");
        assert!(!changed.contains_key("Content-Security-Policy"));
        assert_eq!(
            changed["Strict-Transport-Security"],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(changed["Cache-Control"], "no-store", "not configurable");
    }

    #[test]
    fn production_refuses_a_missing_or_weak_jwt_secret() {
        for secret in [None, Some("short")] {
            let mut pairs = vec![("TALLY_ENV", "production")];
            if let Some(secret) = secret {
                pairs.push(("JWT_SECRET", secret));
            }
            let error = Settings::from_environment(&Environment::from_pairs(pairs)).unwrap_err();
            assert_eq!(error.name, "JWT_SECRET");
            assert!(!error.to_string().contains("short"), "the secret is never printed");
        }
        let strong = "0123456789abcdef0123456789abcdef";
        let env = Environment::from_pairs([("TALLY_ENV", "production"), ("JWT_SECRET", strong)]);
        assert!(Settings::from_environment(&env).unwrap().production);
    }

    #[test]
    fn relaxed_durability_is_an_explicit_choice() {
        let env = Environment::from_pairs([("TALLY_DURABILITY", "Relaxed")]);
        assert_eq!(
            Settings::from_environment(&env).unwrap().engine.durability,
            Durability::Relaxed
        );
    }

    #[test]
    fn the_sqlite_log_limit_is_read_from_the_environment() {
        let env = Environment::from_pairs([("TALLY_SQLITE_WAL_PAGES_MAX", "2048")]);
        assert_eq!(
            Settings::from_environment(&env).unwrap().engine.sqlite_wal_pages_max,
            2048
        );
        let defaults = Settings::from_environment(&Environment::default()).unwrap();
        assert_eq!(defaults.engine.sqlite_wal_pages_max, 32_768);
    }
}
