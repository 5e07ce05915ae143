//! `spawn_app()`: the real application on a random port over a fresh database.

use tally::configuration::{Environment, Settings};
use tally::startup::Application;
pub use tally_actors::testing::{Backend, TestDb};

/// A running Tally and a client for it. Dropping it stops the server and removes the
/// database.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    server: actix_web::dev::ServerHandle,
    pub engine: tally_actors::Engine,
    _db: TestDb,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    tally_actors::testing::init_logging();
    let db = TestDb::create(backend).await;
    let env = Environment::from_pairs([
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DATABASE_URL", db.url.as_str()),
        ("TALLY_ARBITERS", "2"),
        ("TALLY_DB_CONNECTIONS", "4"),
    ]);
    let settings = Settings::from_environment(&env).expect("test settings are valid");
    let application = Application::build(settings)
        .await
        .expect("the application starts");
    let address = format!("http://127.0.0.1:{}", application.port());
    let server = application.handle();
    let engine = application.engine().clone();
    actix_web::rt::spawn(async move {
        let _ = application.run_until_stopped().await;
    });
    TestApp {
        address,
        client: reqwest::Client::new(),
        server,
        engine,
        _db: db,
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the request reaches the server")
    }

    /// Stop gracefully and wait until everything queued is written.
    pub async fn stop(self) {
        self.server.stop(true).await;
        self.engine.shutdown().await;
    }
}

/// Run an async test function against both stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[actix_web::test]
                async fn on_postgres() {
                    super::$test($crate::helpers::Backend::Postgres).await
                }

                #[actix_web::test]
                async fn on_sqlite() {
                    super::$test($crate::helpers::Backend::Sqlite).await
                }
            }
        )*
    };
}
