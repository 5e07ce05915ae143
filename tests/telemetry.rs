//! Traces: a transfer through the real server, exported over OTLP/HTTP to a receiver in
//! this process, arrives as a span tree — request → coordinator steps → actor handling
//! — with the request id, and the persister batch that made it durable links to it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tally::configuration::{Environment, Settings};
use tally::startup::Application;
use tally_actors::testing::{Backend, TestDb};

type Received = Arc<Mutex<Vec<Span>>>;

async fn receive(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(request) => {
            let mut spans = received.lock().unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
            HttpResponse::Ok().content_type("application/x-protobuf").finish()
        }
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(text) => Some(text.clone()),
            AnyValue::IntValue(number) => Some(number.to_string()),
            _ => None,
        })
}

#[actix_web::test]
async fn a_transfer_is_traced_from_the_request_to_the_batch_that_made_it_durable() {
    let received: Received = Arc::default();
    let data = web::Data::new(received.clone());
    let receiver = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/traces", web::post().to(receive))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let receiver_port = receiver.addrs()[0].port();
    actix_web::rt::spawn(receiver.run());

    let db = TestDb::create(Backend::Sqlite).await;
    let endpoint = format!("http://127.0.0.1:{receiver_port}");
    let env = Environment::from_pairs([
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DATABASE_URL", db.url.as_str()),
        ("JWT_SECRET", "telemetry-test-secret-telemetry-test-secret"),
        ("TALLY_ADMIN_USERNAME", "root"),
        ("TALLY_ADMIN_PASSWORD", "admin-password-1"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
    ]);
    let settings = Settings::from_environment(&env).unwrap();
    let telemetry = tally::telemetry::init(&settings.log);
    let application = Application::build(settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}/api/v1", application.port());
    let handle = application.handle();
    actix_web::rt::spawn(application.run_until_stopped());

    let client = reqwest::Client::new();
    let token = |body: serde_json::Value| body["access_token"].as_str().unwrap().to_string();
    let login = |username: &str, password: &str| {
        client
            .post(format!("{base}/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
    };
    let admin = token(login("root", "admin-password-1").await.unwrap().json().await.unwrap());
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let user: serde_json::Value = client
            .post(format!("{base}/auth/register"))
            .json(&json!({ "username": name, "email": format!("{name}@example.com"), "password": "long enough pw" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(user["id"].as_i64().unwrap());
    }
    let alice = token(login("alice", "long enough pw").await.unwrap().json().await.unwrap());
    let credited = client
        .post(format!("{base}/transactions/credit"))
        .bearer_auth(&admin)
        .json(&json!({ "user_id": ids[0], "amount": "10.00" }))
        .send()
        .await
        .unwrap();
    assert_eq!(credited.status(), 201);
    let transferred = client
        .post(format!("{base}/transactions/transfer"))
        .bearer_auth(&alice)
        .header("x-request-id", "trace-me-7")
        .json(&json!({ "from_user_id": ids[0], "to_user_id": ids[1], "amount": "2.50" }))
        .send()
        .await
        .unwrap();
    assert_eq!(transferred.status(), 201);

    // Spans are exported in batches: flush until the request's span and the batch span
    // linking to its trace have arrived (the batch ends after the caller heard back, and
    // batches of earlier writes link to other traces).
    let mut spans = Vec::new();
    for _ in 0..50 {
        telemetry.flush();
        spans = received.lock().unwrap().clone();
        let request_trace = spans
            .iter()
            .find(|span| attribute(span, "request_id").as_deref() == Some("trace-me-7"))
            .map(|span| span.trace_id.clone());
        if let Some(trace) = &request_trace
            && spans
                .iter()
                .any(|span| span.name == "persister.batch" && span.links.iter().any(|link| link.trace_id == *trace))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = spans
        .iter()
        .find(|span| attribute(span, "request_id").as_deref() == Some("trace-me-7"))
        .expect("the request span, with its request id");
    assert_eq!(request.name, "POST /api/v1/transactions/transfer");
    assert_eq!(
        attribute(request, "http.route").as_deref(),
        Some("/api/v1/transactions/transfer")
    );
    assert_eq!(attribute(request, "http.response.status_code").as_deref(), Some("201"));
    let in_trace: Vec<&Span> = spans.iter().filter(|span| span.trace_id == request.trace_id).collect();
    let child = |parent: &Span, name: &str| -> Span {
        in_trace
            .iter()
            .find(|span| span.name == name && span.parent_span_id == parent.span_id)
            .map(|span| (*span).clone())
            .unwrap_or_else(|| {
                let names: Vec<_> = in_trace.iter().map(|span| span.name.as_str()).collect();
                panic!("no {name} under {}; the trace holds {names:?}", parent.name)
            })
    };
    let transfer = child(request, "ledger.transfer");
    assert_eq!(attribute(&transfer, "outcome").as_deref(), Some("completed"));
    let debit = child(&transfer, "ledger.debit");
    let credit = child(&transfer, "ledger.credit");
    child(&transfer, "ledger.durable");
    assert_eq!(
        attribute(&child(&debit, "actor.handle"), "message").as_deref(),
        Some("debit")
    );
    assert_eq!(
        attribute(&child(&credit, "actor.handle"), "message").as_deref(),
        Some("credit")
    );
    let batch = spans
        .iter()
        .find(|span| span.name == "persister.batch" && span.links.iter().any(|link| link.span_id == transfer.span_id))
        .expect("the batch that made the transfer durable links to it");
    assert!(batch.links.iter().any(|link| link.trace_id == request.trace_id));

    handle.stop(true).await;
    telemetry.shutdown();
}
