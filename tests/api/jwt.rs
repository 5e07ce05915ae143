//! Token attacks: every forged, altered, expired, misdirected or revoked token is a 401.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tally::auth::{AuthSettings, TokenSigner};
use tally_actors::Role;

use crate::helpers::{Backend, JWT_SECRET, spawn_app};
use crate::on_both_stores;

fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

async fn forged_altered_expired_and_misdirected_tokens_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user("mallory").await;
    let claims = claims_of(&user.token);
    let now = chrono::Utc::now().timestamp();
    let admin_claims = {
        let mut admin = claims.clone();
        admin["role"] = json!("admin");
        admin
    };
    let with = |key: &str, value: Value| {
        let mut changed = claims.clone();
        changed[key] = value;
        sign(&changed, JWT_SECRET.as_bytes())
    };
    let parts: Vec<&str> = user.token.split('.').collect();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{}.", segment(&json!({"alg": "none", "typ": "JWT"})), parts[1]),
        ),
        (
            "alg RS256 with an HMAC signature",
            format!(
                "{}.{}.{}",
                segment(&json!({"alg": "RS256", "typ": "JWT"})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "tampered payload (role admin)",
            format!("{}.{}.{}", parts[0], segment(&admin_claims), parts[2]),
        ),
        (
            "signed with another secret",
            sign(&admin_claims, b"another-secret-another-secret-012345"),
        ),
        ("expired", with("exp", json!(now - 3600))),
        ("wrong issuer", with("iss", json!("someone-else"))),
        ("wrong audience", with("aud", json!("another-api"))),
        ("refresh token used as access token", user.refresh_token.clone()),
        ("no signature", format!("{}.{}", parts[0], parts[1])),
        ("garbage", "not.a.token".into()),
        ("stale token version", with("ver", json!(99))),
        ("unknown user", with("sub", json!("987654"))),
    ];
    for (case, token) in cases {
        let reply = app.get("/api/v1/balances/current", Some(&token)).await;
        assert_eq!(reply.status, 401, "{case}: {}", reply.text);
        reply.assert_problem(401, "unauthenticated");
        assert_eq!(reply.headers["www-authenticate"], "Bearer", "{case}");
    }
    // Anonymous and malformed headers too.
    app.get("/api/v1/balances/current", None)
        .await
        .assert_problem(401, "unauthenticated");
    let reply = TestAppExt::raw_auth(&app, "Basic dXNlcjpwYXNz").await;
    reply.assert_problem(401, "unauthenticated");
    // The genuine token still works.
    assert_eq!(app.get("/api/v1/balances/current", Some(&user.token)).await.status, 200);
    app.stop().await;
}

async fn a_role_change_retires_tokens_issued_before(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let user = app.user("promoted").await;
    // Used once before, so the token is known as verified when the change comes.
    assert_eq!(app.get("/api/v1/balances/current", Some(&user.token)).await.status, 200);
    let reply = app
        .send(
            "PUT",
            &format!("/api/v1/users/{}", user.id),
            Some(&admin.token),
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    app.get("/api/v1/balances/current", Some(&user.token))
        .await
        .assert_problem(401, "unauthenticated");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({ "refresh_token": user.refresh_token }),
    )
    .await
    .assert_problem(401, "unauthenticated");
    let fresh = app.login("promoted", crate::helpers::PASSWORD).await;
    assert_eq!(fresh.body["user"]["role"], "admin");
    let audit = app
        .engine
        .store()
        .audit_entries("user", &user.id.to_string())
        .await
        .unwrap();
    let change = audit
        .iter()
        .find(|entry| entry.action == "role_changed")
        .expect("the role change is audited");
    assert_eq!(change.actor_user_id, Some(admin.id));
    assert_eq!(change.details, json!({ "from": "user", "to": "admin" }));
    app.stop().await;
}

/// A signer holding the deployment's secret issues tokens the server takes like its own
/// (the load tester's owner tokens); one with another secret is refused, and so is a token
/// at a user's old token version.
async fn tokens_from_a_signer_with_the_deployments_secret_authenticate(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user("signed").await;
    let signer = |secret: &str| {
        TokenSigner::new(AuthSettings {
            secret: secret.as_bytes().to_vec(),
            issuer: "tally".into(),
            audience: "tally-api".into(),
            access_ttl: std::time::Duration::from_secs(600),
            refresh_ttl: std::time::Duration::from_secs(600),
        })
    };
    let token = |signer: &TokenSigner, version: i64| {
        let claims = signer.access_claims(user.id, Role::User, version, chrono::Utc::now());
        signer.sign(&claims).unwrap()
    };
    let genuine = signer(JWT_SECRET);
    let reply = app.get("/api/v1/balances/current", Some(&token(&genuine, 0))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["user_id"], user.id, "{}", reply.text);
    let forged = signer("another-secret-another-secret-0123456789");
    app.get("/api/v1/balances/current", Some(&token(&forged, 0)))
        .await
        .assert_problem(401, "unauthenticated");
    app.get("/api/v1/balances/current", Some(&token(&genuine, 1)))
        .await
        .assert_problem(401, "unauthenticated");
    app.stop().await;
}

trait TestAppExt {
    async fn raw_auth(&self, header: &str) -> crate::helpers::Reply;
}

impl TestAppExt for crate::helpers::TestApp {
    async fn raw_auth(&self, header: &str) -> crate::helpers::Reply {
        let response = self
            .client
            .get(self.url("/api/v1/balances/current"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        crate::helpers::TestApp::read(response).await
    }
}

on_both_stores!(
    forged_altered_expired_and_misdirected_tokens_are_refused,
    a_role_change_retires_tokens_issued_before,
    tokens_from_a_signer_with_the_deployments_secret_authenticate,
);
