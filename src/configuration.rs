//! Configuration from the environment (design.md §8), with defaults that work on a
//! laptop. A `.env` file in the working directory is read first when present.
//!
//! Every value is parsed once, here; an invalid one stops start-up with one line that
//! names the variable and what it accepts.

use std::collections::HashMap;
use std::time::Duration;

use tally_actors::{DEFAULT_DATABASE_URL, Durability, EngineConfig, Placement};

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
}

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
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
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
        let millis: u64 = self.parse(
            name,
            default.as_millis() as u64,
            "a whole number of milliseconds",
        )?;
        Ok(Duration::from_millis(millis))
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
        Ok(Settings {
            host: env.get("HOST").unwrap_or("0.0.0.0").to_string(),
            port: env.parse("PORT", 8080, "a port number (0-65535)")?,
            log: LogSettings { format, filter },
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
                queue_capacity: env.positive("TALLY_QUEUE_CAPACITY", defaults.queue_capacity)?,
                mailbox_capacity: env
                    .positive("TALLY_MAILBOX_CAPACITY", defaults.mailbox_capacity)?,
                passivation_idle: Duration::from_secs(env.positive(
                    "TALLY_PASSIVATION_IDLE_SECONDS",
                    defaults.passivation_idle.as_secs() as usize,
                )? as u64),
                placement,
                durable_wait_max: env.millis("TALLY_DURABLE_WAIT_MS", defaults.durable_wait_max)?,
                read_connections_max: env.positive(
                    "TALLY_DB_CONNECTIONS",
                    defaults.read_connections_max as usize,
                )? as u32,
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
            Settings::from_environment(&env)
                .unwrap()
                .engine
                .database_url,
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
            ("LOG_FORMAT", "xml", "json or pretty"),
        ];
        for (name, value, hint) in cases {
            let error =
                Settings::from_environment(&Environment::from_pairs([(name, value)])).unwrap_err();
            let line = error.to_string();
            assert!(line.contains(name) && line.contains(hint), "{name}: {line}");
            assert!(!line.contains('\n'), "one line");
        }
    }

    #[test]
    fn relaxed_durability_is_an_explicit_choice() {
        let env = Environment::from_pairs([("TALLY_DURABILITY", "Relaxed")]);
        assert_eq!(
            Settings::from_environment(&env).unwrap().engine.durability,
            Durability::Relaxed
        );
    }
}
