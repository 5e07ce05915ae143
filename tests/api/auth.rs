//! Registration, login, refresh rotation and logout.

use serde_json::json;

use crate::helpers::{Backend, PASSWORD, spawn_app};
use crate::on_both_stores;

async fn a_user_registers_logs_in_refreshes_and_logs_out(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({ "username": "alice", "email": "Alice@Example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["username"], "alice");
    assert_eq!(reply.body["email"], "alice@example.com");
    assert_eq!(reply.body["role"], "user");
    assert!(reply.body.get("password_hash").is_none() && !reply.text.contains(PASSWORD));

    let login = app.login("alice", PASSWORD).await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert_eq!(login.body["token_type"], "Bearer");
    assert!(login.body["expires_in"].as_u64().unwrap() > 0);
    let access = login.body["access_token"].as_str().unwrap().to_string();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/v1/balances/current", Some(&access)).await.status, 200);

    // Rotation: the refresh token works once and returns a new pair.
    let rotated = app
        .post("/api/v1/auth/refresh", None, json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let refresh_2 = rotated.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh_2, refresh);
    let access_2 = rotated.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/v1/balances/current", Some(&access_2)).await.status, 200);

    // Reuse of a spent refresh token is refused and revokes the whole session.
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": refresh }))
        .await
        .assert_problem(401, "unauthenticated");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": refresh_2 }))
        .await
        .assert_problem(401, "unauthenticated");

    // Logout: the access token stops working at once.
    let again = app.login("alice", PASSWORD).await;
    let access_3 = again.body["access_token"].as_str().unwrap().to_string();
    let refresh_3 = again.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        app.send("POST", "/api/v1/auth/logout", Some(&access_3), None)
            .await
            .status,
        204
    );
    app.get("/api/v1/balances/current", Some(&access_3))
        .await
        .assert_problem(401, "unauthenticated");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": refresh_3 }))
        .await
        .assert_problem(401, "unauthenticated");
    app.stop().await;
}

async fn wrong_credentials_are_refused_the_same_way_and_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user("bob").await;
    let wrong_password = app.login("bob", "not the password").await;
    wrong_password.assert_problem(401, "invalid_credentials");
    let no_such_user = app.login("nobody", "not the password").await;
    no_such_user.assert_problem(401, "invalid_credentials");
    assert_eq!(wrong_password.body["detail"], no_such_user.body["detail"]);
    let audit = app
        .engine
        .store()
        .audit_entries("user", &user.id.to_string())
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["registered", "login_failed"]);
    assert!(
        !format!("{:?}", audit).contains("not the password"),
        "passwords are never audited"
    );
    app.stop().await;
}

async fn usernames_and_emails_are_unique(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("carol").await;
    let body = |username: &str, email: &str| json!({ "username": username, "email": email, "password": PASSWORD });
    app.post("/api/v1/auth/register", None, body("CAROL", "other@example.com"))
        .await
        .assert_problem(409, "username_taken");
    app.post("/api/v1/auth/register", None, body("carol2", "CAROL@example.com"))
        .await
        .assert_problem(409, "email_taken");
    app.stop().await;
}

on_both_stores!(
    a_user_registers_logs_in_refreshes_and_logs_out,
    wrong_credentials_are_refused_the_same_way_and_audited,
    usernames_and_emails_are_unique,
);
