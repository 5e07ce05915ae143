//! Building and running the HTTP application.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tally_actors::Engine;

use crate::configuration::Settings;
use crate::routes::health;

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

impl Application {
    /// Open the engine (migrating the store) and bind the listener. Must run inside an
    /// actix system (`#[actix_web::main]`, `#[actix_web::test]`).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let engine = Engine::open(settings.engine.clone())
            .await
            .context("opening the ledger engine")?;
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(engine.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(health::readyz))
                .route("/api/v1/test/health", web::get().to(health::healthz))
        })
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .listen(listener)?
        .run();
        tracing::info!(
            port,
            durability = engine.durability().as_str(),
            "Tally is serving"
        );
        Ok(Application {
            port,
            server,
            engine,
        })
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
