//! `spawn_app()`: the real application on a random port over a fresh database, and
//! typed helpers to drive it.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tally::configuration::{Environment, Settings};
use tally::startup::Application;
pub use tally_actors::testing::{Backend, TestDb, assert_store_invariants};

pub const ADMIN_USERNAME: &str = "root";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PASSWORD: &str = "correct horse battery";
/// The JWT secret of every test app, so tests can forge tokens with it.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// A running Tally and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    server: actix_web::dev::ServerHandle,
    pub engine: tally_actors::Engine,
    /// The database, owned unless this app is a second instance on another app's.
    pub db: Option<TestDb>,
}

/// A user the test registered and logged in.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: i64,
    pub token: String,
    pub refresh_token: String,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Assert this is a problem+json error with `code` and `status`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {}", self.text);
        let content_type = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or(""))
            .unwrap_or("");
        assert!(
            content_type.starts_with("application/problem+json"),
            "content type {content_type:?} of {}",
            self.text
        );
        assert_eq!(self.body["code"], code, "code of {}", self.text);
        assert_eq!(self.body["status"], status, "status field of {}", self.text);
        assert!(self.body["request_id"].is_string(), "request_id in {}", self.text);
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let db = TestDb::create(backend).await;
    let url = db.url.clone();
    let mut app = spawn_app_on(&url, extra).await;
    app.db = Some(db);
    app
}

/// Another instance on the database at `url` (which the caller keeps alive).
pub async fn spawn_app_on(url: &str, extra: &[(&str, &str)]) -> TestApp {
    tally_actors::testing::init_logging();
    let mut pairs = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DATABASE_URL", url),
        ("TALLY_ARBITERS", "2"),
        ("TALLY_HTTP_WORKERS", "2"),
        ("TALLY_DB_CONNECTIONS", "4"),
        ("JWT_SECRET", JWT_SECRET),
        ("TALLY_ADMIN_USERNAME", ADMIN_USERNAME),
        ("TALLY_ADMIN_PASSWORD", ADMIN_PASSWORD),
        // Every test client comes from one address: budgets far above what a test
        // sends, except where a test sets its own.
        ("TALLY_RATE_LIMIT_IP_PER_SECOND", "1000000"),
        ("TALLY_RATE_LIMIT_IP_BURST", "1000000"),
        ("TALLY_RATE_LIMIT_USER_PER_SECOND", "1000000"),
        ("TALLY_RATE_LIMIT_USER_BURST", "1000000"),
        ("TALLY_RATE_LIMIT_LOGIN_PER_MINUTE", "1000000"),
        ("TALLY_RATE_LIMIT_LOGIN_BURST", "1000000"),
    ];
    // Later pairs win: a test's own settings override the defaults above.
    pairs.extend_from_slice(extra);
    let settings = Settings::from_environment(&Environment::from_pairs(pairs)).expect("test settings are valid");
    let application = Application::build(settings).await.expect("the application starts");
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
        db: None,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::read(request.send().await.expect("the request reaches the server")).await
    }

    pub async fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::read(request.send().await.expect("the request reaches the server")).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send("POST", path, token, Some(body)).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({ "username": username, "password": password }),
        )
        .await
    }

    pub async fn admin(&self) -> TestUser {
        self.logged_in(ADMIN_USERNAME, ADMIN_PASSWORD).await
    }

    async fn logged_in(&self, username: &str, password: &str) -> TestUser {
        let reply = self.login(username, password).await;
        assert_eq!(reply.status, 200, "login: {}", reply.text);
        TestUser {
            id: reply.body["user"]["id"].as_i64().unwrap(),
            token: reply.body["access_token"].as_str().unwrap().to_string(),
            refresh_token: reply.body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// Register and log in a user.
    pub async fn user(&self, username: &str) -> TestUser {
        let reply = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD }),
            )
            .await;
        assert_eq!(reply.status, 201, "register: {}", reply.text);
        self.logged_in(username, PASSWORD).await
    }

    /// Credit `amount` (a decimal string) to `user` as admin.
    pub async fn fund(&self, admin: &TestUser, user: &TestUser, amount: &str) {
        let reply = self
            .post(
                "/api/v1/transactions/credit",
                Some(&admin.token),
                json!({ "user_id": user.id, "amount": amount }),
            )
            .await;
        assert_eq!(reply.status, 201, "credit: {}", reply.text);
    }

    pub async fn balance(&self, user: &TestUser) -> String {
        let reply = self.get("/api/v1/balances/current", Some(&user.token)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.body["balance"].as_str().unwrap().to_string()
    }

    /// Stop gracefully and wait until everything queued is written.
    pub async fn stop(self) -> Option<TestDb> {
        self.server.stop(true).await;
        self.engine.shutdown().await;
        self.db
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
