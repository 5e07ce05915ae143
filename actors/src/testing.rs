//! Test support shared by the engine's and the service's tests (feature
//! `test-support`): a throwaway database per test on either store, a TCP proxy that can
//! cut the connection to PostgreSQL, and a helper to wait for background work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::Store;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The server every PostgreSQL test creates its own database on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// A throwaway database, dropped (or deleted) when this goes out of scope.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    name: String,
}

impl TestDb {
    pub async fn create(backend: Backend) -> TestDb {
        let name = format!("tally_test_{}", Uuid::now_v7().simple());
        match backend {
            Backend::Postgres => {
                let admin = admin_url();
                let mut connection = PgConnection::connect(&admin).await.unwrap_or_else(|error| {
                    panic!(
                        "PostgreSQL is not reachable at {admin} ({error}); start it with \
                         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                         or point DATABASE_URL at a server"
                    )
                });
                connection
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("creating a test database");
                let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    backend,
                    name,
                }
            }
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                TestDb {
                    url: format!("sqlite://{}", path.display()),
                    backend,
                    name: path.display().to_string(),
                }
            }
        }
    }

    /// The same database reached through `proxy`.
    pub fn url_through(&self, proxy: &Proxy) -> String {
        let mut url = url::Url::parse(&self.url).expect("a PostgreSQL URL");
        url.set_port(Some(proxy.port)).expect("a port");
        url.to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self.backend {
            Backend::Postgres => {
                let name = self.name.clone();
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async {
                        let mut connection = PgConnection::connect(&admin_url()).await?;
                        connection
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .await?;
                        anyhow::Ok(())
                    })
                })
                .join();
                if let Ok(Err(error)) = dropped {
                    eprintln!("could not drop test database {}: {error:#}", self.name);
                }
            }
            Backend::Sqlite => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", self.name));
                }
            }
        }
    }
}

/// A TCP proxy in front of PostgreSQL whose connections can be cut and restored.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (accept_open, accept_cut) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !accept_open.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let cut = accept_cut.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { port, open, cut }
    }

    /// Drop every connection and refuse new ones, as a database that went away.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

/// Poll `check` until it holds, failing after `within`. For waiting on background work
/// (a queue draining), never for asserting how long something takes.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Log to the test's output when `RUST_LOG` asks for it.
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Every invariant of design.md §11 that the store can show holds.
pub async fn assert_store_invariants(store: &Store) {
    let violations = store.verify(20).await.expect("verify runs");
    assert!(
        violations.is_empty(),
        "invariants broken:\n{}",
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
