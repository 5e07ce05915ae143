//! Redis: shared rate limits, an exact read cache and shared revocations — and Tally
//! degrading to in-process fallbacks, never to a 5xx, when Redis is away.

use std::time::Duration;

use serde_json::json;
use tally_actors::testing::Proxy;
use tokio::task::JoinSet;

use crate::helpers::{Backend, TestApp, TestUser, spawn_app_on, spawn_app_with};

const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// The Redis every test shares, each under a key prefix of its own.
fn redis_url() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS.to_string());
    let reachable = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
    if let Err(error) = reachable {
        panic!(
            "Redis is not reachable at {url} ({error}); start it with `redis-server --daemonize yes --bind 127.0.0.1 \
             -::1 --port 6379 --save \"\" --appendonly no` or point REDIS_URL at a server"
        );
    }
    url
}

fn prefix() -> String {
    format!("tally-test-{}", uuid::Uuid::now_v7().simple())
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(name))
        .filter(|line| line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A flow that touches every Redis-backed feature, checking answers and status codes.
async fn exercise(app: &TestApp, admin: &TestUser, alice: &TestUser, bob: &TestUser, round: usize) {
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "0.01" }),
        )
        .await;
    assert_eq!(transfer.status, 201, "round {round}: {}", transfer.text);
    let id = transfer.body["id"].as_str().unwrap();
    let history = app
        .get("/api/v1/transactions/history?limit=5", Some(&alice.token))
        .await;
    assert_eq!(history.status, 200, "round {round}: {}", history.text);
    assert_eq!(
        history.body["items"][0]["id"], id,
        "round {round}: the newest write is in the history"
    );
    let by_id = app.get(&format!("/api/v1/transactions/{id}"), Some(&bob.token)).await;
    assert_eq!(by_id.status, 200, "round {round}");
    let journal = app.get("/api/v1/balances/historical?limit=1", Some(&bob.token)).await;
    assert_eq!(
        journal.body["items"][0]["transaction_id"], id,
        "round {round}: bob's journal is current"
    );
    assert_eq!(app.get("/api/v1/users", Some(&admin.token)).await.status, 200);
}

async fn users(app: &TestApp) -> (TestUser, TestUser, TestUser) {
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "100.00").await;
    (admin, alice, bob)
}

#[actix_web::test]
async fn two_instances_share_one_rate_limit_budget() {
    let redis = redis_url();
    let prefix = prefix();
    let settings = [
        ("REDIS_URL", redis.as_str()),
        ("TALLY_REDIS_PREFIX", prefix.as_str()),
        ("TALLY_RATE_LIMIT_LOGIN_PER_MINUTE", "4"),
        ("TALLY_RATE_LIMIT_LOGIN_BURST", "4"),
    ];
    let first = spawn_app_with(Backend::Sqlite, &settings).await;
    let second = spawn_app_with(Backend::Sqlite, &settings).await;
    let mut statuses = Vec::new();
    for attempt in 0..6 {
        let app = if attempt % 2 == 0 { &first } else { &second };
        let reply = app.login("nobody", "wrong password!").await;
        if reply.status == 429 {
            reply.assert_problem(429, "rate_limited");
            let retry: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry));
            assert_eq!(reply.headers["ratelimit-limit"], "4");
            assert_eq!(reply.headers["ratelimit-remaining"], "0");
        }
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 429, 429],
        "four attempts in all, whichever instance"
    );
    let scrape = first.get("/metrics", None).await.text;
    assert!(metric(&scrape, "tally_rate_limited_total", &[("scope", "login")]) >= 1.0);
    first.stop().await;
    second.stop().await;
}

#[actix_web::test]
async fn a_history_read_after_a_write_is_never_stale_under_concurrent_readers_and_writers() {
    let redis = redis_url();
    let prefix = prefix();
    let app = spawn_app_with(
        Backend::Postgres,
        &[("REDIS_URL", redis.as_str()), ("TALLY_REDIS_PREFIX", prefix.as_str())],
    )
    .await;
    let admin = app.admin().await;
    let mut users = Vec::new();
    for index in 0..8 {
        let user = app.user(&format!("user{index}")).await;
        app.fund(&admin, &user, "100.00").await;
        users.push(user);
    }
    let mut tasks = JoinSet::new();
    for (index, user) in users.iter().cloned().enumerate() {
        let (client, base, reader_token) = (app.client.clone(), app.address.clone(), user.token.clone());
        let to = users[(index + 1) % users.len()].id;
        // A writer: transfer, then read its own history and journal at once.
        tasks.spawn(async move {
            for round in 0..25 {
                let sent: serde_json::Value = client
                    .post(format!("{base}/api/v1/transactions/transfer"))
                    .bearer_auth(&user.token)
                    .json(&json!({ "from_user_id": user.id, "to_user_id": to, "amount": "0.01" }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                // Only this writer sends to `to`, and `to` never sends back: the newest
                // entry with that counterparty must be the transfer just made.
                let history: serde_json::Value = client
                    .get(format!("{base}/api/v1/transactions/history?limit=3&counterparty={to}"))
                    .bearer_auth(&user.token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(
                    history["items"][0]["id"], sent["id"],
                    "writer {index} round {round}: stale history"
                );
            }
        });
        // A reader of the same user's history, filling the cache all the while.
        let (client, base, token) = (app.client.clone(), app.address.clone(), reader_token);
        let to = users[(index + 1) % users.len()].id;
        tasks.spawn(async move {
            for _ in 0..40 {
                let reply = client
                    .get(format!("{base}/api/v1/transactions/history?limit=3&counterparty={to}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), 200);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let scrape = app.get("/metrics", None).await.text;
    let hits = metric(
        &scrape,
        "tally_cache_requests_total",
        &[("cache", "history"), ("result", "hit")],
    );
    let misses = metric(
        &scrape,
        "tally_cache_requests_total",
        &[("cache", "history"), ("result", "miss")],
    );
    assert!(hits > 0.0, "the cache served reads (hits {hits}, misses {misses})");
    assert_eq!(metric(&scrape, "tally_redis_up", &[]), 1.0);
    app.stop().await;
}

#[actix_web::test]
async fn logout_on_one_instance_revokes_on_the_other() {
    let redis = redis_url();
    let prefix = prefix();
    let settings = [("REDIS_URL", redis.as_str()), ("TALLY_REDIS_PREFIX", prefix.as_str())];
    let first = spawn_app_with(Backend::Postgres, &settings).await;
    let url = first.db.as_ref().unwrap().url.clone();
    let second = spawn_app_on(&url, &settings).await;
    let alice = first.user("alice").await;
    assert_eq!(
        second.get("/api/v1/balances/current", Some(&alice.token)).await.status,
        200
    );
    assert_eq!(
        first
            .send("POST", "/api/v1/auth/logout", Some(&alice.token), None)
            .await
            .status,
        204
    );
    let mut status = 200;
    for _ in 0..100 {
        status = second.get("/api/v1/balances/current", Some(&alice.token)).await.status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 401, "the other instance refuses the revoked token");
    // An instance started after the logout learns it from Redis too.
    let third = spawn_app_on(&url, &settings).await;
    let mut status = 200;
    for _ in 0..100 {
        status = third.get("/api/v1/balances/current", Some(&alice.token)).await.status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 401, "a new instance loads the revocations");
    third.stop().await;
    second.stop().await;
    first.stop().await;
}

#[actix_web::test]
async fn redis_unreachable_from_the_start_costs_nothing_but_sharing() {
    let prefix = prefix();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("TALLY_REDIS_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let (admin, alice, bob) = users(&app).await;
    for round in 0..5 {
        exercise(&app, &admin, &alice, &bob, round).await;
    }
    // Revocation works in process.
    assert_eq!(
        app.send("POST", "/api/v1/auth/logout", Some(&alice.token), None)
            .await
            .status,
        204
    );
    app.get("/api/v1/balances/current", Some(&alice.token))
        .await
        .assert_problem(401, "unauthenticated");
    let scrape = app.get("/metrics", None).await.text;
    assert_eq!(metric(&scrape, "tally_redis_up", &[]), 0.0);
    assert_eq!(metric(&scrape, "tally_http_requests_total", &[("status", "500")]), 0.0);
    assert_eq!(metric(&scrape, "tally_http_requests_total", &[("status", "503")]), 0.0);
    app.stop().await;
}

#[actix_web::test]
async fn redis_lost_mid_run_is_survived_and_the_cache_comes_back() {
    let redis = redis_url();
    let target = redis.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let proxy = Proxy::start(target).await;
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = prefix();
    let app = spawn_app_with(
        Backend::Postgres,
        &[("REDIS_URL", through.as_str()), ("TALLY_REDIS_PREFIX", prefix.as_str())],
    )
    .await;
    let (admin, alice, bob) = users(&app).await;
    for round in 0..3 {
        exercise(&app, &admin, &alice, &bob, round).await;
    }
    proxy.cut();
    for round in 3..10 {
        exercise(&app, &admin, &alice, &bob, round).await;
    }
    let scrape = app.get("/metrics", None).await.text;
    assert_eq!(metric(&scrape, "tally_redis_up", &[]), 0.0, "the outage is visible");
    proxy.restore();
    // Back to cached operation: the link closes again and reads hit the cache.
    let hits_before = metric(&scrape, "tally_cache_requests_total", &[("result", "hit")]);
    let mut recovered = false;
    for round in 10..60 {
        exercise(&app, &admin, &alice, &bob, round).await;
        for _ in 0..3 {
            app.get("/api/v1/transactions/history?limit=5", Some(&alice.token))
                .await;
        }
        let scrape = app.get("/metrics", None).await.text;
        if metric(&scrape, "tally_redis_up", &[]) == 1.0
            && metric(&scrape, "tally_cache_requests_total", &[("result", "hit")]) > hits_before
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Redis and the cache are back in use");
    let scrape = app.get("/metrics", None).await.text;
    assert_eq!(metric(&scrape, "tally_http_requests_total", &[("status", "500")]), 0.0);
    assert_eq!(metric(&scrape, "tally_http_requests_total", &[("status", "503")]), 0.0);
    app.stop().await;
}
