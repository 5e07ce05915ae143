//! A Tally process the tester starts, kills and restarts itself (chaos runs): its own
//! port on the loopback, its own database, a fixed JWT secret so tokens outlive
//! restarts, and raised rate limits. Each start's output goes to `tally-N.log` in the
//! output directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How often start-up polls `/readyz`.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Rate limits high enough never to bind on one machine: the tester reports 429s, but a
/// chaos or benchmark run is about the ledger, not the limiter.
const RATE_LIMIT_UNBOUNDED: &str = "1000000";

/// How a Tally process is started.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub binary: PathBuf,
    pub database_url: String,
    pub port: u16,
    pub admin_username: String,
    pub admin_password: String,
    /// `strict` or `relaxed`.
    pub durability: String,
    pub log_directory: PathBuf,
    /// More environment, e.g. `TALLY_DURABLE_WAIT_MS`.
    pub extra_environment: Vec<(String, String)>,
}

/// A running (or killed) Tally.
#[derive(Debug)]
pub struct TallyProcess {
    config: ServerConfig,
    jwt_secret: String,
    child: Option<Child>,
    starts: u32,
}

/// A free port on the loopback, found by binding port 0. Another process could take it
/// before Tally binds it; on a test machine that race is rare and start-up then fails
/// clearly.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl TallyProcess {
    pub fn new(config: ServerConfig) -> TallyProcess {
        TallyProcess {
            config,
            jwt_secret: format!("loadtest-{}", uuid::Uuid::new_v4().simple()),
            child: None,
            starts: 0,
        }
    }

    /// The JWT secret Tally is started with.
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.config.log_directory.join(format!("tally-{}.log", self.starts))
    }

    /// Start the process and wait until `/readyz` answers 200, at most `ready_timeout`.
    pub async fn start(&mut self, ready_timeout: Duration) -> anyhow::Result<Duration> {
        if self.child.is_some() {
            bail!("Tally is already running");
        }
        self.starts += 1;
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let port = self.config.port.to_string();
        let mut command = Command::new(&self.config.binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", &port)
            .env("DATABASE_URL", &self.config.database_url)
            .env("TALLY_DURABILITY", &self.config.durability)
            .env("JWT_SECRET", &self.jwt_secret)
            .env("TALLY_ADMIN_USERNAME", &self.config.admin_username)
            .env("TALLY_ADMIN_PASSWORD", &self.config.admin_password)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,tally=info,tally_actors=info")
            .env("TALLY_RATE_LIMIT_IP_PER_SECOND", RATE_LIMIT_UNBOUNDED)
            .env("TALLY_RATE_LIMIT_IP_BURST", RATE_LIMIT_UNBOUNDED)
            .env("TALLY_RATE_LIMIT_USER_PER_SECOND", RATE_LIMIT_UNBOUNDED)
            .env("TALLY_RATE_LIMIT_USER_BURST", RATE_LIMIT_UNBOUNDED)
            .env("TALLY_RATE_LIMIT_LOGIN_PER_MINUTE", RATE_LIMIT_UNBOUNDED)
            .env("TALLY_RATE_LIMIT_LOGIN_BURST", RATE_LIMIT_UNBOUNDED)
            .envs(self.config.extra_environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.config.binary.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the probe client")?;
        let url = format!("{}/readyz", self.base_url());
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(started.elapsed());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "Tally exited during start-up ({status}); see {}:\n{}",
                    log_path.display(),
                    tail(&log_path)
                );
            }
            if started.elapsed() >= ready_timeout {
                bail!(
                    "Tally was not ready within {} s; see {}:\n{}",
                    ready_timeout.as_secs(),
                    log_path.display(),
                    tail(&log_path)
                );
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// SIGKILL, as a crash: nothing is flushed.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing Tally")?;
        }
        Ok(())
    }

    /// SIGTERM, then wait at most `timeout` for a graceful exit (SIGKILL after that).
    /// Returns whether it exited by itself with status 0.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        if let Some(pid) = child.id() {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("running kill -TERM")?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.kill().await?;
                Ok(false)
            }
        }
    }
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    /// Enough lines to show the failure and its context, few enough to read.
    const LINES: usize = 15;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}
