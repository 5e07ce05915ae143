//! Cross-cutting request handling: request ids, panics, timeouts, and turning every
//! error response the framework produces into problem+json.

use std::future::{Future, Ready, ready};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{Error, HttpMessage, ResponseError};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::error::{ApiError, Code, PROBLEM_JSON};
use crate::metrics::HttpMetrics;
use crate::rate_limit::{RateLimiter, Scope};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The route label of requests that matched no route (or whose route is unknown):
/// raw paths never become labels.
const UNMATCHED_ROUTE: &str = "unmatched";
/// Longest request id taken from a client; longer ones are replaced.
const REQUEST_ID_LENGTH_MAX: usize = 128;

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The id of the request being handled: taken from `X-Request-Id` when the client sent a
/// sane one, generated otherwise; echoed in the response and on every log line.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of the request this task is handling, if any.
    pub fn current() -> Option<String> {
        CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
    }

    fn from_request(request: &ServiceRequest) -> RequestId {
        let sent = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= REQUEST_ID_LENGTH_MAX
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            });
        RequestId(
            sent.map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        )
    }
}

/// The outermost layer: request id, a span and an access log line per request, HTTP
/// metrics, panics caught, a time limit, and the security headers on every answer.
#[derive(Clone, Debug)]
pub struct RequestGuard {
    pub timeout: Duration,
    pub metrics: Option<HttpMetrics>,
    pub routes: RouteTemplates,
    pub headers: SecurityHeaders,
}

/// Headers every response carries (see `configuration::security_headers`), errors
/// included: those the guard answers itself (a panic, a timeout) and those a middleware
/// answers before any handler runs (the per-IP limit), which never pass through a
/// response-side middleware.
#[derive(Clone, Debug, Default)]
pub struct SecurityHeaders(Rc<Vec<(HeaderName, HeaderValue)>>);

impl SecurityHeaders {
    /// From the configuration's (name, value) pairs, already checked to be valid headers.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        SecurityHeaders(Rc::new(
            pairs
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect(),
        ))
    }

    /// Set each header the response does not set itself.
    fn apply(&self, headers: &mut header::HeaderMap) {
        for (name, value) in self.0.iter() {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// An error answered by the guard, rendered (by the server, after the guard is done)
/// with the request's id and the security headers.
#[derive(Debug)]
struct Guarded {
    error: Error,
    headers: SecurityHeaders,
    request_id: String,
}

impl std::fmt::Display for Guarded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, formatter)
    }
}

impl ResponseError for Guarded {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.error.as_response_error().status_code()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut response = CURRENT_REQUEST_ID.sync_scope(self.request_id.clone(), || self.error.error_response());
        self.headers.apply(response.headers_mut());
        response
    }
}

/// The route templates the server serves, to name a request by its template (never
/// its raw path: ids must not become span names or metric labels) before routing has
/// happened.
#[derive(Clone, Debug, Default)]
pub struct RouteTemplates {
    templates: Rc<Vec<(String, actix_web::dev::ResourceDef)>>,
}

impl RouteTemplates {
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut templates: Vec<(String, actix_web::dev::ResourceDef)> = templates
            .into_iter()
            .map(|template| (template.to_string(), actix_web::dev::ResourceDef::new(template)))
            .collect();
        // Literal segments win over parameters: `/transactions/history` before
        // `/transactions/{id}`.
        templates.sort_by_key(|(template, _)| template.matches('{').count());
        RouteTemplates {
            templates: Rc::new(templates),
        }
    }

    /// The template `path` matches, or "unmatched".
    pub fn template_of(&self, path: &str) -> &str {
        self.templates
            .iter()
            .find(|(_, definition)| definition.is_match(path))
            .map_or(UNMATCHED_ROUTE, |(template, _)| template.as_str())
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestGuard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = RequestGuardService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestGuardService {
            service: Rc::new(service),
            timeout: self.timeout,
            metrics: self.metrics.clone(),
            routes: self.routes.clone(),
            headers: self.headers.clone(),
        }))
    }
}

#[derive(Debug)]
pub struct RequestGuardService<S> {
    service: Rc<S>,
    timeout: Duration,
    metrics: Option<HttpMetrics>,
    routes: RouteTemplates,
    headers: SecurityHeaders,
}

impl<S, B> Service<ServiceRequest> for RequestGuardService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let request_id = RequestId::from_request(&request);
        request.extensions_mut().insert(request_id.clone());
        let method = request.method().to_string();
        let request_bytes = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0);
        let route = self.routes.template_of(request.path()).to_string();
        let span = tracing::info_span!(
            "http.request",
            otel.name = format!("{method} {route}"),
            otel.kind = "server",
            request_id = %request_id.0,
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
        );
        let service = self.service.clone();
        let timeout = self.timeout;
        let metrics = self.metrics.clone();
        let headers = self.headers.clone();
        let started = std::time::Instant::now();
        let id = request_id.0.clone();
        // Counts and logs one answered request.
        let finish = move |status: u16, response_bytes: Option<u64>| {
            let seconds = started.elapsed().as_secs_f64();
            tracing::Span::current().record("http.response.status_code", status);
            if let Some(metrics) = &metrics {
                metrics.observe(&method, &route, status, seconds, request_bytes, response_bytes);
            }
            tracing::info!(
                method = %method,
                route = %route,
                status,
                duration_ms = seconds * 1e3,
                "request"
            );
        };
        // The request cannot be kept for building a response here (routing needs it
        // unshared), so a panic or a timeout becomes an error the server renders; the
        // error carries the request id and the security headers itself.
        let handled = async move {
            let guarded = |error: Error| -> Error {
                Guarded {
                    error,
                    headers: headers.clone(),
                    request_id: id.clone(),
                }
                .into()
            };
            let call = std::panic::catch_unwind(AssertUnwindSafe(|| service.call(request)));
            let outcome = match call {
                Ok(future) => tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()).await,
                Err(panic) => Ok(Err(panic)),
            };
            let response = match outcome {
                Ok(Ok(Ok(response))) => response.map_into_boxed_body(),
                Ok(Ok(Err(error))) => {
                    finish(error.as_response_error().status_code().as_u16(), None);
                    return Err(guarded(error));
                }
                Ok(Err(panic)) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|text| text.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    let error = ApiError::internal(anyhow::anyhow!("a request handler panicked: {message}"));
                    finish(500, None);
                    return Err(guarded(error.into()));
                }
                Err(_) => {
                    let error = ApiError::new(
                        Code::RequestTimeout,
                        format!(
                            "The request took longer than {} s; for a write, retry with the same Idempotency-Key to learn its outcome",
                            timeout.as_secs()
                        ),
                    );
                    finish(503, None);
                    return Err(guarded(error.into()));
                }
            };
            let mut response = response;
            headers.apply(response.headers_mut());
            if let Ok(value) = HeaderValue::from_str(&id) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
            }
            let response_bytes = match response.response().body().size() {
                actix_web::body::BodySize::Sized(bytes) => Some(bytes),
                _ => None,
            };
            finish(response.status().as_u16(), response_bytes);
            Ok(response)
        };
        Box::pin(CURRENT_REQUEST_ID.scope(request_id.0, handled.instrument(span)))
    }
}

/// The client's address as this server sees it (the peer of the connection; forwarded
/// headers are not trusted, as any client can set them).
pub fn client_ip(request: &actix_web::HttpRequest) -> String {
    request
        .peer_addr()
        .map(|address| address.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The per-IP budget of every request but the operators' probes.
pub async fn limit_per_ip(
    request: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let probe = matches!(request.path(), "/healthz" | "/readyz" | "/metrics");
    let limiter = request.app_data::<actix_web::web::Data<RateLimiter>>().cloned();
    if let (false, Some(limiter)) = (probe, limiter) {
        let ip = client_ip(request.request());
        let decision = limiter.check(&[(Scope::Ip, &ip)]).await;
        if !decision.allowed {
            return Err(ApiError::rate_limited(decision, "Too many requests from this address").into());
        }
    }
    next.call(request).await
}

/// Error responses produced outside our handlers (an unknown route, a body over the
/// limit, a wrong content type) get a problem+json body like every other error. JSON
/// bodies are our handlers' own and are left alone: a problem, or the state `/readyz`
/// reports with its 503.
pub fn problem_bodies<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(|response: ServiceResponse<B>| {
        let is_ours = response.headers().get(header::CONTENT_TYPE).is_some_and(|value| {
            let value = value.as_bytes();
            value.starts_with(PROBLEM_JSON.as_bytes()) || value.starts_with(b"application/json")
        });
        if is_ours {
            return Ok(ErrorHandlerResponse::Response(response.map_into_left_body()));
        }
        let status = response.status();
        let code = match status.as_u16() {
            404 => Code::RouteNotFound,
            405 => Code::MethodNotAllowed,
            413 => Code::PayloadTooLarge,
            415 => Code::UnsupportedMediaType,
            400 => Code::MalformedJson,
            401 => Code::Unauthenticated,
            403 => Code::Forbidden,
            408 | 503 | 504 => Code::RequestTimeout,
            status if status >= 500 => Code::InternalError,
            _ => Code::ValidationFailed,
        };
        let error = ApiError::new(code, code.title());
        let (request, _) = response.into_parts();
        let problem = error.error_response();
        Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(request, problem).map_into_right_body(),
        ))
    })
}

#[cfg(test)]
mod route_tests {
    #[test]
    fn requests_are_named_by_their_route_template() {
        let routes = super::RouteTemplates::new([
            "/api/v1/transactions/{id}",
            "/api/v1/transactions/history",
            "/api/v1/transactions/user/{user_id}",
        ]);
        assert_eq!(
            routes.template_of("/api/v1/transactions/history"),
            "/api/v1/transactions/history"
        );
        assert_eq!(
            routes.template_of("/api/v1/transactions/0190abcd"),
            "/api/v1/transactions/{id}"
        );
        assert_eq!(
            routes.template_of("/api/v1/transactions/user/7"),
            "/api/v1/transactions/user/{user_id}"
        );
        assert_eq!(routes.template_of("/wp-admin.php"), "unmatched");
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    async fn panics() -> HttpResponse {
        panic!("a bug")
    }

    async fn sleeps() -> HttpResponse {
        tokio::time::sleep(Duration::from_secs(5)).await;
        HttpResponse::Ok().finish()
    }

    #[actix_web::test]
    async fn a_panicking_handler_becomes_a_generic_500_problem_with_the_request_id() {
        let metrics = crate::metrics::HttpMetrics::new(&prometheus::Registry::new()).unwrap();
        let app = test::init_service(App::new().route("/panic", web::get().to(panics)).wrap(RequestGuard {
            timeout: Duration::from_secs(10),
            metrics: Some(metrics.clone()),
            routes: RouteTemplates::new(["/panic"]),
            headers: SecurityHeaders::new([("X-Content-Type-Options", "nosniff")]),
        }))
        .await;
        let request = test::TestRequest::get()
            .uri("/panic")
            .insert_header((REQUEST_ID_HEADER, "abc-123"))
            .to_request();
        let error = app.call(request).await.expect_err("the guard answers with an error");
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), 500);
        assert_eq!(response.headers().get(REQUEST_ID_HEADER).unwrap(), "abc-123");
        assert_eq!(response.headers().get("x-content-type-options").unwrap(), "nosniff");
        let body = actix_web::body::to_bytes(response.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "internal_error");
        assert_eq!(body["request_id"], "abc-123");
        assert!(!body.to_string().contains("a bug"), "panic text never reaches a client");
        assert_eq!(
            metrics.requests.with_label_values(&["GET", "/panic", "500"]).get(),
            1,
            "a panicked request is counted with its 500"
        );
    }

    #[actix_web::test]
    async fn a_request_over_the_time_limit_is_answered_503() {
        let app = test::init_service(App::new().route("/slow", web::get().to(sleeps)).wrap(RequestGuard {
            timeout: Duration::from_millis(50),
            metrics: None,
            routes: RouteTemplates::default(),
            headers: SecurityHeaders::new([("Cache-Control", "no-store")]),
        }))
        .await;
        let error = app
            .call(test::TestRequest::get().uri("/slow").to_request())
            .await
            .expect_err("timed out");
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
        assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
        let body = actix_web::body::to_bytes(response.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "request_timeout");
    }
}
