//! Bad inputs, table-driven: each gets the right 4xx problem+json, never a 5xx.

use serde_json::json;

use crate::helpers::{Backend, spawn_app};
use crate::on_both_stores;

/// One bad request and what it must get.
struct Bad {
    why: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The field named in `errors`, when there is one.
    field: Option<&'static str>,
}

fn json_body(
    why: &'static str,
    path: &str,
    body: &str,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Bad {
    Bad {
        why,
        method: "POST",
        path: path.to_string(),
        content_type: "application/json",
        body: body.as_bytes().to_vec(),
        status,
        code,
        field,
    }
}

fn get(why: &'static str, path: String, status: u16, code: &'static str, field: Option<&'static str>) -> Bad {
    Bad {
        why,
        method: "GET",
        path,
        content_type: "application/json",
        body: Vec::new(),
        status,
        code,
        field,
    }
}

async fn bad_inputs_get_a_precise_4xx_problem_never_a_5xx(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let user = app.user("victim").await;
    app.fund(&admin, &user, "100.00").await;
    let u = user.id;
    const CREDIT: &str = "/api/v1/transactions/credit";
    const TRANSFER: &str = "/api/v1/transactions/transfer";
    const DEBIT: &str = "/api/v1/transactions/debit";
    const REGISTER: &str = "/api/v1/auth/register";
    let credit = |amount: &str| format!(r#"{{"user_id": {u}, "amount": {amount}}}"#);
    let cases = vec![
        json_body(
            "truncated JSON",
            CREDIT,
            r#"{"user_id": 1, "amount""#,
            400,
            "malformed_json",
            None,
        ),
        json_body("empty body", CREDIT, "", 400, "malformed_json", None),
        json_body(
            "not JSON at all",
            CREDIT,
            "user_id=1&amount=5",
            400,
            "malformed_json",
            None,
        ),
        json_body(
            "trailing garbage",
            CREDIT,
            &format!("{} x", credit("5")),
            400,
            "malformed_json",
            None,
        ),
        json_body(
            "JSON array instead of object",
            CREDIT,
            "[1, 2]",
            422,
            "validation_failed",
            Some("body"),
        ),
        json_body(
            "JSON string instead of object",
            CREDIT,
            "\"credit\"",
            422,
            "validation_failed",
            Some("body"),
        ),
        json_body("null body", CREDIT, "null", 422, "validation_failed", Some("body")),
        json_body(
            "user_id as string",
            CREDIT,
            r#"{"user_id": "7", "amount": 5}"#,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        json_body(
            "user_id as float",
            CREDIT,
            r#"{"user_id": 7.5, "amount": 5}"#,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        json_body(
            "user_id negative",
            CREDIT,
            r#"{"user_id": -3, "amount": 5}"#,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        json_body(
            "user_id zero (the system account)",
            CREDIT,
            r#"{"user_id": 0, "amount": 5}"#,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        json_body(
            "user_id beyond i64",
            CREDIT,
            r#"{"user_id": 99999999999999999999, "amount": 5}"#,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        json_body(
            "missing amount",
            CREDIT,
            &format!(r#"{{"user_id": {u}}}"#),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "missing user_id",
            CREDIT,
            r#"{"amount": 5}"#,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        json_body(
            "unknown field",
            CREDIT,
            &format!(r#"{{"user_id": {u}, "amount": 5, "memo": "hi"}}"#),
            422,
            "validation_failed",
            Some("memo"),
        ),
        json_body(
            "amount zero",
            CREDIT,
            &credit("0"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount zero as string",
            CREDIT,
            &credit("\"0.00\""),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount negative",
            CREDIT,
            &credit("-5"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount negative string",
            CREDIT,
            &credit("\"-0.01\""),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount with 3 decimals",
            CREDIT,
            &credit("12.345"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount 3 decimals as string",
            CREDIT,
            &credit("\"1.001\""),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "0.1+0.2 float artefact",
            CREDIT,
            &credit("\"0.30000000000000004\""),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "0.1+0.2 float artefact as number",
            CREDIT,
            &credit("0.30000000000000004"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount in exponent notation",
            CREDIT,
            &credit("1e3"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount huge",
            CREDIT,
            &credit("100000000000.01"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount absurdly huge",
            CREDIT,
            &credit("1e400"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount as boolean",
            CREDIT,
            &credit("true"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount null",
            CREDIT,
            &credit("null"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount as text",
            CREDIT,
            &credit("\"ten\""),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount with spaces",
            CREDIT,
            &credit("\" 5\""),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "amount as object",
            CREDIT,
            &credit("{\"value\": 5}"),
            422,
            "validation_failed",
            Some("amount"),
        ),
        json_body(
            "debit beyond the balance",
            DEBIT,
            &format!(r#"{{"user_id": {u}, "amount": "100.01"}}"#),
            422,
            "insufficient_funds",
            None,
        ),
        json_body(
            "transfer to self",
            TRANSFER,
            &format!(r#"{{"from_user_id": {u}, "to_user_id": {u}, "amount": 1}}"#),
            422,
            "self_transfer",
            None,
        ),
        json_body(
            "transfer to no one",
            TRANSFER,
            &format!(r#"{{"from_user_id": {u}, "to_user_id": 424242, "amount": 1}}"#),
            422,
            "account_not_found",
            None,
        ),
        json_body(
            "transfer missing target",
            TRANSFER,
            &format!(r#"{{"from_user_id": {u}, "amount": 1}}"#),
            422,
            "validation_failed",
            Some("to_user_id"),
        ),
        json_body(
            "register with short password",
            REGISTER,
            r#"{"username": "newbie", "email": "n@example.com", "password": "short"}"#,
            422,
            "validation_failed",
            Some("password"),
        ),
        json_body(
            "register with bad email",
            REGISTER,
            r#"{"username": "newbie", "email": "not-an-email", "password": "long enough pw"}"#,
            422,
            "validation_failed",
            Some("email"),
        ),
        json_body(
            "register with bad username",
            REGISTER,
            r#"{"username": "no spaces allowed", "email": "n@example.com", "password": "long enough pw"}"#,
            422,
            "validation_failed",
            Some("username"),
        ),
        json_body(
            "register with a role",
            REGISTER,
            r#"{"username": "sneaky", "email": "s@example.com", "password": "long enough pw", "role": "admin"}"#,
            422,
            "validation_failed",
            Some("role"),
        ),
        json_body(
            "refresh with garbage",
            "/api/v1/auth/refresh",
            r#"{"refresh_token": "garbage"}"#,
            401,
            "unauthenticated",
            None,
        ),
        Bad {
            why: "oversized body",
            content_type: "application/json",
            body: format!(r#"{{"user_id": {u}, "amount": 5, "pad": "{}"}}"#, "x".repeat(70_000)).into_bytes(),
            ..json_body("", CREDIT, "", 413, "payload_too_large", None)
        },
        Bad {
            why: "wrong content type",
            content_type: "text/plain",
            body: credit("5").into_bytes(),
            ..json_body("", CREDIT, "", 415, "unsupported_media_type", None)
        },
        Bad {
            why: "form content type",
            content_type: "application/x-www-form-urlencoded",
            body: b"user_id=1&amount=5".to_vec(),
            ..json_body("", CREDIT, "", 415, "unsupported_media_type", None)
        },
        get(
            "transaction id not a UUID",
            "/api/v1/transactions/not-a-uuid".into(),
            400,
            "invalid_parameter",
            Some("id"),
        ),
        get(
            "unknown transaction",
            format!("/api/v1/transactions/{}", uuid::Uuid::now_v7()),
            404,
            "transaction_not_found",
            None,
        ),
        get(
            "user id not a number",
            "/api/v1/users/abc".into(),
            400,
            "invalid_parameter",
            Some("user_id"),
        ),
        get(
            "user id zero",
            "/api/v1/balances/current/0".into(),
            400,
            "invalid_parameter",
            Some("user_id"),
        ),
        get(
            "user id negative",
            "/api/v1/balances/current/-4".into(),
            400,
            "invalid_parameter",
            Some("user_id"),
        ),
        get(
            "unknown user's balance",
            "/api/v1/balances/current/424242".into(),
            404,
            "user_not_found",
            None,
        ),
        get(
            "at-time without time",
            "/api/v1/balances/at-time".into(),
            400,
            "invalid_parameter",
            Some("time"),
        ),
        get(
            "at-time with a bad time",
            "/api/v1/balances/at-time?time=yesterday".into(),
            400,
            "invalid_parameter",
            Some("time"),
        ),
        get(
            "at-time with a date only",
            "/api/v1/balances/at-time?time=2026-11-26".into(),
            400,
            "invalid_parameter",
            Some("time"),
        ),
        get(
            "history with a bad type",
            "/api/v1/transactions/history?type=gift".into(),
            400,
            "invalid_parameter",
            Some("type"),
        ),
        get(
            "history with a bad status",
            "/api/v1/transactions/history?status=maybe".into(),
            400,
            "invalid_parameter",
            Some("status"),
        ),
        get(
            "history with a bad time",
            "/api/v1/transactions/history?from=soon".into(),
            400,
            "invalid_parameter",
            Some("from"),
        ),
        get(
            "history with from after to",
            "/api/v1/transactions/history?from=2026-11-27T00:00:00Z&to=2026-11-26T00:00:00Z".into(),
            400,
            "invalid_parameter",
            Some("from"),
        ),
        get(
            "history with a garbage cursor",
            "/api/v1/transactions/history?cursor=%%%".into(),
            400,
            "invalid_parameter",
            Some("cursor"),
        ),
        get(
            "history with a forged cursor",
            "/api/v1/transactions/history?cursor=bm90LWEtY3Vyc29y".into(),
            400,
            "invalid_parameter",
            Some("cursor"),
        ),
        get(
            "history with limit 0",
            "/api/v1/transactions/history?limit=0".into(),
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        get(
            "history with limit too large",
            "/api/v1/transactions/history?limit=100000".into(),
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        get(
            "history with limit not a number",
            "/api/v1/transactions/history?limit=ten".into(),
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        get(
            "history with an unknown parameter",
            "/api/v1/transactions/history?sort=asc".into(),
            400,
            "invalid_parameter",
            Some("sort"),
        ),
        get(
            "users with a bad cursor",
            "/api/v1/users?cursor=zzz".into(),
            400,
            "invalid_parameter",
            Some("cursor"),
        ),
        get(
            "unknown route",
            "/api/v1/nothing-here".into(),
            404,
            "route_not_found",
            None,
        ),
        json_body(
            "batch legs not a list",
            "/api/v1/transactions/batch",
            r#"{"legs": {"type": "credit"}}"#,
            422,
            "validation_failed",
            Some("legs"),
        ),
        json_body(
            "batch leg with a float amount string",
            "/api/v1/transactions/batch",
            &format!(r#"{{"legs": [{{"type": "credit", "user_id": {u}, "amount": "1e3"}}]}}"#),
            422,
            "validation_failed",
            Some("legs[0].amount"),
        ),
        json_body(
            "post with a malformed body",
            "/api/v1/transactions/0190c7a2-0000-7000-8000-000000000000/post",
            r#"{"amount": "#,
            400,
            "malformed_json",
            None,
        ),
        json_body(
            "reverse with a mistyped field",
            "/api/v1/transactions/0190c7a2-0000-7000-8000-000000000000/reverse",
            r#"{"amont": "1.00"}"#,
            422,
            "validation_failed",
            Some("amont"),
        ),
        json_body(
            "void of an id that is not a UUID",
            "/api/v1/transactions/12/void",
            "",
            400,
            "invalid_parameter",
            Some("id"),
        ),
        json_body(
            "hold expiring as a string of seconds",
            TRANSFER,
            &format!(r#"{{"from_user_id": {u}, "to_user_id": 1, "amount": 1, "pending": true, "expires_in": "60"}}"#),
            422,
            "validation_failed",
            Some("expires_in"),
        ),
        Bad {
            why: "rules with a negative overdraft",
            method: "PUT",
            path: format!("/api/v1/accounts/{u}/rules"),
            content_type: "application/json",
            body: br#"{"overdraft_limit": -5}"#.to_vec(),
            status: 422,
            code: "validation_failed",
            field: Some("overdraft_limit"),
        },
        Bad {
            why: "rules for user id zero",
            method: "PUT",
            path: "/api/v1/accounts/0/rules".into(),
            content_type: "application/json",
            body: br#"{}"#.to_vec(),
            status: 400,
            code: "invalid_parameter",
            field: Some("user_id"),
        },
    ];
    assert!(cases.len() >= 40);
    for case in cases {
        let token = &admin.token;
        let mut request = app
            .client
            .request(
                reqwest::Method::from_bytes(case.method.as_bytes()).unwrap(),
                app.url(&case.path),
            )
            .bearer_auth(token);
        if case.method != "GET" {
            request = request
                .header("content-type", case.content_type)
                .body(case.body.clone());
        }
        let reply = crate::helpers::TestApp::read(request.send().await.unwrap()).await;
        assert!(reply.status < 500, "{}: a 5xx: {}", case.why, reply.text);
        assert_eq!(reply.status, case.status, "{}: {}", case.why, reply.text);
        reply.assert_problem(case.status, case.code);
        if let Some(field) = case.field {
            let fields: Vec<&str> = reply.body["errors"]
                .as_array()
                .map(|errors| errors.iter().filter_map(|error| error["field"].as_str()).collect())
                .unwrap_or_default();
            assert!(fields.contains(&field), "{}: field {field} in {}", case.why, reply.text);
        }
    }
    // Nothing moved through all of that but the refused debit, transfer and credit
    // records themselves.
    assert_eq!(app.balance(&user).await, "100.00");
    app.stop().await;
}

async fn an_unusable_idempotency_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let user = app.user("keyed").await;
    for key in ["", &"k".repeat(300), "with space"] {
        let reply = app
            .client
            .post(app.url("/api/v1/transactions/credit"))
            .bearer_auth(&admin.token)
            .header("idempotency-key", key)
            .json(&json!({ "user_id": user.id, "amount": 1 }))
            .send()
            .await
            .unwrap();
        let reply = crate::helpers::TestApp::read(reply).await;
        reply.assert_problem(400, "invalid_parameter");
    }
    app.stop().await;
}

on_both_stores!(
    bad_inputs_get_a_precise_4xx_problem_never_a_5xx,
    an_unusable_idempotency_key_is_refused,
);
