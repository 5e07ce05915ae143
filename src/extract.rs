//! Request extraction with precise errors: JSON bodies (400 when not JSON, 422 with the
//! offending field otherwise), query strings (400 naming the parameter), path ids, the
//! `Idempotency-Key` header.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use tally_actors::{AccountId, IDEMPOTENCY_KEY_LENGTH_MAX};

use crate::error::{ApiError, Code, FieldError};

/// The largest request body accepted: every request of this API fits in a few hundred
/// bytes; 64 KiB leaves room without letting a client make the server buffer much.
pub const BODY_SIZE_MAX: usize = 64 * 1024;

/// A JSON body parsed into `T` (whose fields are validated by the handler).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type = content_type(request);
        let bytes = web::Bytes::from_request(request, payload);
        Box::pin(async move {
            let bytes = bytes.await.map_err(read_error)?;
            json_body(content_type.as_deref(), &bytes).map(JsonBody)
        })
    }
}

/// A JSON body that may be left out: an empty body is `None`; anything else must be a
/// valid JSON body of `T`, with the same errors as [`JsonBody`] (a mistyped field is
/// never mistaken for "no body").
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type = content_type(request);
        let bytes = web::Bytes::from_request(request, payload);
        Box::pin(async move {
            let bytes = bytes.await.map_err(read_error)?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJsonBody(None));
            }
            json_body(content_type.as_deref(), &bytes).map(|body| OptionalJsonBody(Some(body)))
        })
    }
}

/// The media type of the request body, lower-cased, without parameters.
fn content_type(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn read_error(error: actix_web::Error) -> ApiError {
    if error.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("The body may have at most {BODY_SIZE_MAX} bytes"),
        )
    } else {
        ApiError::new(Code::MalformedJson, "The request body could not be read")
    }
}

/// A body sent as JSON, parsed into `T`.
fn json_body<T: DeserializeOwned>(content_type: Option<&str>, bytes: &[u8]) -> Result<T, ApiError> {
    let is_json = content_type.is_some_and(|kind| kind == "application/json" || kind.ends_with("+json"));
    if !is_json {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "Send the body as JSON with Content-Type: application/json",
        ));
    }
    parse_json(bytes)
}

/// Parse `bytes` as `T`: syntax errors are 400, wrong or missing or unknown fields 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body of this API is an object; serde would also read a struct from
    // an array, which no client means.
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|byte| *byte != b'{') {
        return match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(_) => Err(ApiError::validation(vec![FieldError::new(
                "body",
                "must be a JSON object",
            )])),
            Err(error) => Err(ApiError::new(
                Code::MalformedJson,
                format!("The body is not valid JSON: {error}"),
            )),
        };
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = match parsed {
        Ok(value) => value,
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Syntax
                | serde_json::error::Category::Eof
                | serde_json::error::Category::Io => {
                    ApiError::new(Code::MalformedJson, format!("The body is not valid JSON: {inner}"))
                }
                serde_json::error::Category::Data => ApiError::validation(vec![field_error(&path, &inner)]),
            });
        }
    };
    deserializer
        .end()
        .map_err(|error| ApiError::new(Code::MalformedJson, format!("The body is not valid JSON: {error}")))?;
    Ok(value)
}

/// The field a serde data error is about, and its message without the position.
fn field_error(path: &str, error: &serde_json::Error) -> FieldError {
    let message = error.to_string();
    let message = match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message,
    };
    let named = message.split('`').nth(1);
    let at_root = path == "." || path.is_empty();
    let field = match named {
        // The path of an unknown field already ends with its name.
        Some(name) if message.starts_with("unknown field") && at_root => name.to_string(),
        Some(name) if message.starts_with("missing field") => {
            if at_root {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        }
        _ if at_root => "body".to_string(),
        _ => path.to_string(),
    };
    let message = if message.starts_with("unknown field") {
        "is not a field of this request".to_string()
    } else if message.starts_with("missing field") {
        "is required".to_string()
    } else {
        message
    };
    FieldError::new(field, message)
}

/// Query parameters parsed into `T`; a parameter of the wrong form is a 400 naming it.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let pairs = url_pairs(request.query_string());
        let value = serde_json::Value::Object(pairs);
        let parsed: Result<T, _> = serde_path_to_error::deserialize(value);
        std::future::ready(parsed.map(Query).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let field = field_error(&path, &inner);
            ApiError::invalid_parameter(&field.field, field.message)
        }))
    }
}

/// The query string as a JSON object of strings (so numbers are parsed by the target
/// type's own rules, with our messages).
fn url_pairs(query: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (key, value) in form_urlencoded(query) {
        map.insert(key, serde_json::Value::String(value));
    }
    map
}

fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

/// A user id from the path: a positive integer.
pub fn path_user_id(raw: &str) -> Result<AccountId, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .and_then(|id| AccountId::new(id).ok())
        .ok_or_else(|| ApiError::invalid_parameter("user_id", "must be a positive integer"))
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
pub fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_LENGTH_MAX)
        .filter(|key| key.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "Idempotency-Key",
                format!("must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_string()))
}

/// For query structs: parse an optional parameter with `FromStr`, naming what it expects.
pub fn from_str_opt<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
{
    let text: Option<String> = serde::Deserialize::deserialize(deserializer)?;
    match text {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a valid {}", short_type_name::<T>()))),
    }
}

fn short_type_name<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "i64" | "u64" | "i32" | "u32" => "integer",
        name if name.contains("DateTime") => "RFC 3339 time, such as 2026-11-26T10:00:00Z",
        name => name.rsplit("::").next().unwrap_or(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        user_id: i64,
        amount: Box<serde_json::value::RawValue>,
    }

    #[test]
    fn json_errors_name_the_field() {
        let cases = [
            (r#"{"user_id": 1"#, Code::MalformedJson, None),
            ("", Code::MalformedJson, None),
            (r#"{"user_id": 1, "amount": 5} trailing"#, Code::MalformedJson, None),
            (r#"{"amount": 5}"#, Code::ValidationFailed, Some("user_id")),
            (
                r#"{"user_id": "one", "amount": 5}"#,
                Code::ValidationFailed,
                Some("user_id"),
            ),
            (
                r#"{"user_id": 1, "amount": 5, "memo": "x"}"#,
                Code::ValidationFailed,
                Some("memo"),
            ),
            (r#"[1, 2]"#, Code::ValidationFailed, Some("body")),
        ];
        for (body, code, field) in cases {
            let error = parse_json::<Body>(body.as_bytes()).unwrap_err();
            assert_eq!(error.code, code, "{body}");
            if let Some(field) = field {
                assert_eq!(error.errors[0].field, field, "{body}");
            }
        }
    }

    #[test]
    fn query_strings_are_decoded() {
        assert_eq!(
            form_urlencoded("time=2026-11-26T10%3A00%3A00%2B01%3A00&limit=5&x"),
            vec![
                ("time".to_string(), "2026-11-26T10:00:00+01:00".to_string()),
                ("limit".to_string(), "5".to_string()),
                ("x".to_string(), String::new())
            ]
        );
    }
}
