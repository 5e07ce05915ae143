//! Building and running the HTTP application.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tally_actors::{Engine, Role, Store};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::auth::{Auth, AuthSettings};
use crate::cache::ReadCache;
use crate::configuration::{JWT_SECRET_BYTES_MIN, Settings};
use crate::error::{ApiError, Code};
use crate::extract::BODY_SIZE_MAX;
use crate::metrics::HttpMetrics;
use crate::middleware::{RequestGuard, RouteTemplates, SecurityHeaders, limit_per_ip, problem_bodies};
use crate::rate_limit::RateLimiter;
use crate::redis_link::RedisLink;
use crate::routes::{admin, auth, balances, health, movements, openapi, rules, transactions, users};

/// Register every route. Order matters where paths overlap: `/transactions/history`
/// before `/transactions/{id}`. A request is matched against the routes in this order,
/// and every route with a path parameter it passes costs a regular-expression match, so
/// the money movements (fixed paths, most of the traffic) come first.
pub fn routes(config: &mut ServiceConfig) {
    config
        .service(health::healthz)
        .service(health::readyz)
        .service(health::metrics)
        .service(health::legacy_health)
        .service(
            utoipa_actix_web::scope("/api/v1")
                .service(transactions::transfer)
                .service(transactions::credit)
                .service(transactions::debit)
                .service(movements::batch)
                .service(auth::register)
                .service(auth::login)
                .service(auth::refresh)
                .service(auth::logout)
                .service(users::list)
                .service(users::get_one)
                .service(users::update)
                .service(users::remove)
                .service(movements::post_hold)
                .service(movements::void_hold)
                .service(movements::reverse)
                .service(transactions::history)
                .service(transactions::of_user)
                .service(transactions::by_id)
                .service(balances::current)
                .service(balances::current_for)
                .service(balances::historical)
                .service(balances::historical_for)
                .service(balances::at_time)
                .service(balances::at_time_for)
                .service(rules::get_rules)
                .service(rules::put_rules)
                .service(admin::actors)
                .service(admin::persister)
                .service(openapi::document),
        );
}

/// The OpenAPI document of exactly the routes [`routes`] registers.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    App::new()
        .into_utoipa_app()
        .openapi(openapi::ApiDoc::openapi())
        .configure(routes)
        .split_for_parts()
        .1
}

async fn route_not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::RouteNotFound,
        "There is no such endpoint; see /api/v1/openapi.json",
    ))
}

/// A bound, not yet running server and the engine behind it.
pub struct Application {
    port: u16,
    server: Server,
    engine: Engine,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The JWT signing secret: `JWT_SECRET`, or (development only) one generated once and
/// kept in the data directory, so tokens survive a restart.
fn jwt_secret(settings: &Settings) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &settings.auth.jwt_secret {
        if secret.len() < JWT_SECRET_BYTES_MIN {
            tracing::warn!("JWT_SECRET is shorter than {JWT_SECRET_BYTES_MIN} bytes; refused in production");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let directory = data_directory(&settings.engine.database_url);
    let path = directory.join("jwt_secret");
    if let Ok(secret) = std::fs::read(&path)
        && secret.len() >= JWT_SECRET_BYTES_MIN
    {
        return Ok(secret);
    }
    let secret: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    std::fs::create_dir_all(&directory).with_context(|| format!("creating {}", directory.display()))?;
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(path = %path.display(), "JWT_SECRET is not set: generated one for development; set JWT_SECRET in production");
    Ok(secret)
}

/// Where local state lives: beside the SQLite file, or `./data`.
fn data_directory(database_url: &str) -> PathBuf {
    database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|path| path.split('?').next().unwrap_or(path))
        .and_then(|path| PathBuf::from(path).parent().map(PathBuf::from))
        .filter(|directory| !directory.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Build the authentication state for `store`.
pub fn build_auth(settings: &Settings, store: Store, redis: Option<RedisLink>) -> anyhow::Result<Arc<Auth>> {
    let auth = Auth::new(
        AuthSettings {
            secret: jwt_secret(settings)?,
            issuer: settings.auth.issuer.clone(),
            audience: settings.auth.audience.clone(),
            access_ttl: settings.auth.access_ttl,
            refresh_ttl: settings.auth.refresh_ttl,
        },
        store,
        redis,
    )?;
    Ok(Arc::new(auth))
}

/// Create the configured first admin unless a user of that name exists.
async fn ensure_first_admin(settings: &Settings, engine: &Engine, auth: &Arc<Auth>) -> anyhow::Result<()> {
    let Some(admin) = &settings.first_admin else {
        return Ok(());
    };
    if engine.store().user_by_username(&admin.username).await?.is_some() {
        return Ok(());
    }
    let created = auth::create_user(
        engine.store(),
        auth,
        &admin.username,
        &admin.email,
        &admin.password,
        Role::Admin,
        None,
    )
    .await
    .map_err(|error| anyhow::anyhow!("creating the first admin: {}", error.detail))?;
    tracing::info!(user_id = created.id, username = %created.username, "created the first admin");
    Ok(())
}

impl Application {
    /// Open the engine (migrating the store) and bind the listener. Must run inside an
    /// actix system (`#[actix_web::main]`, `#[actix_web::test]`).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let engine = Engine::open(settings.engine.clone())
            .await
            .context("opening the ledger engine")?;
        let registry = &engine.metrics().registry;
        let redis = match &settings.redis_url {
            Some(url) => Some(RedisLink::new(
                url,
                &settings.redis_prefix,
                settings.redis_timeout,
                registry,
            )?),
            None => None,
        };
        let auth = build_auth(&settings, engine.store().clone(), redis.clone())?;
        actix_web::rt::spawn(auth.clone().follow_events());
        let limiter = web::Data::new(RateLimiter::new(settings.rate_limits, redis.clone(), registry)?);
        let cache = Arc::new(ReadCache::new(
            redis,
            settings.cache_ttl,
            settings.cache_entries_max,
            registry,
        )?);
        let invalidated = cache.clone();
        engine
            .set_durable_listener(Box::new(move |accounts| invalidated.invalidate(accounts)))
            .map_err(|error| anyhow::anyhow!(error))?;
        let cache_data = web::Data::from(cache);
        ensure_first_admin(&settings, &engine, &auth).await?;
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
        let port = listener.local_addr()?.port();
        let http_metrics = HttpMetrics::new(&engine.metrics().registry)?;
        let metrics_data = web::Data::new(http_metrics.clone());
        let document = openapi_document();
        let templates: Vec<String> = document.paths.paths.keys().cloned().collect();
        let document = web::Data::new(document);
        let engine_data = web::Data::new(engine.clone());
        let auth_data = web::Data::new(auth);
        let http = settings.http.clone();
        let mut server = HttpServer::new(move || {
            let cors = if http.cors_origins.iter().any(|origin| origin == "*") {
                Cors::default()
                    .allow_any_origin()
                    .allow_any_method()
                    .allow_any_header()
                    .max_age(3600)
            } else {
                http.cors_origins
                    .iter()
                    .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
                    .allow_any_method()
                    .allow_any_header()
                    .max_age(3600)
            };
            App::new()
                .into_utoipa_app()
                .app_data(engine_data.clone())
                .app_data(auth_data.clone())
                .app_data(document.clone())
                .app_data(metrics_data.clone())
                .app_data(limiter.clone())
                .app_data(cache_data.clone())
                .app_data(web::PayloadConfig::new(BODY_SIZE_MAX))
                .configure(routes)
                .default_service(web::to(route_not_found))
                .into_app()
                .wrap(actix_web::middleware::from_fn(limit_per_ip))
                .wrap(problem_bodies())
                .wrap(cors)
                .wrap(RequestGuard {
                    timeout: http.request_timeout,
                    metrics: Some(http_metrics.clone()),
                    routes: RouteTemplates::new(templates.iter().map(String::as_str)),
                    headers: SecurityHeaders::new(
                        http.security_headers
                            .iter()
                            .map(|(name, value)| (*name, value.as_str())),
                    ),
                })
        })
        .shutdown_timeout(settings.shutdown_timeout.as_secs());
        if let Some(workers) = settings.http.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(port, durability = engine.durability().as_str(), "Tally is serving");
        Ok(Application { port, server, engine })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serve until the server is stopped (SIGINT/SIGTERM, or a handle), then finish the
    /// requests in flight and write everything queued before returning.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        self.engine.shutdown().await;
        served.context("the HTTP server failed")
    }

    /// A handle that stops the server gracefully (used by tests).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_state_lives_beside_the_sqlite_file() {
        assert_eq!(data_directory("sqlite://data/tally.db"), PathBuf::from("data"));
        assert_eq!(
            data_directory("sqlite:///tmp/x/tally.db?mode=rwc"),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(data_directory("postgres://u@h/db"), PathBuf::from("data"));
    }
}
