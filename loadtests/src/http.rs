//! The tester's own HTTP/1.1 transport for API requests: a pool of keep-alive
//! connections to one server, each request written in one piece and its answer read with
//! `httparse`.
//!
//! The load generator shares the machine with the server it measures, so every cycle it
//! spends is one the server does not get. A general-purpose client (connection tasks,
//! URL parsing, header maps per request) cost the tester about a fifth of the machine at
//! full load; this transport does only what the tester needs: plain HTTP to `host:port`,
//! a JSON body out, status, two headers and the body back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::TransportError;

/// A connection idle longer than this is not reused: the server may be closing it.
const IDLE_REUSE_MAX: Duration = Duration::from_secs(2);
/// The most response headers read; Tally sends about a dozen.
const HEADERS_MAX: usize = 48;
/// Answers larger than this are refused rather than buffered.
const BODY_MAX: usize = 64 << 20;

/// What an answer carried that the tester reads.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub replayed: bool,
    pub body: Vec<u8>,
}

/// One request: method, path (with query), bearer token, idempotency key, JSON body.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub token: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

struct Connection {
    stream: TcpStream,
    idle_since: Instant,
}

/// Keep-alive connections to one `host:port`.
pub struct Transport {
    /// `host:port`, for connecting and for the `Host` header.
    authority: String,
    idle: Mutex<Vec<Connection>>,
    idle_max: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("authority", &self.authority).finish()
    }
}

impl Transport {
    /// A transport to the server at `base_url` (`http://host:port`, no path).
    pub fn new(
        base_url: &str,
        idle_max: usize,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Transport> {
        let url = url::Url::parse(base_url).map_err(|error| anyhow::anyhow!("target {base_url}: {error}"))?;
        if url.scheme() != "http" {
            anyhow::bail!("target {base_url}: the load tester speaks plain http only");
        }
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("target {base_url} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Transport {
            authority: format!("{host}:{port}"),
            idle: Mutex::new(Vec::new()),
            idle_max,
            connect_timeout,
            request_timeout,
        })
    }

    /// Send `request` and read its answer whole, within the request timeout.
    pub async fn send(&self, request: &Request<'_>) -> Result<Reply, TransportError> {
        let bytes = self.encode(request);
        let reused = self.take_idle();
        let fresh = reused.is_none();
        let mut stream = match reused {
            Some(stream) => stream,
            None => self.connect().await?,
        };
        let exchange = exchange(&mut stream, &bytes);
        let (reply, keep) = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                return Err(TransportError {
                    kind: "transport_other",
                    message: format!(
                        "{} {} on a {} connection: {error}",
                        request.method,
                        request.path,
                        if fresh { "new" } else { "reused" }
                    ),
                });
            }
            Err(_) => {
                return Err(TransportError {
                    kind: "transport_timeout",
                    message: format!(
                        "{} {}: no answer within {:?}",
                        request.method, request.path, self.request_timeout
                    ),
                });
            }
        };
        if keep {
            self.put_idle(stream);
        }
        Ok(reply)
    }

    /// The request as it goes on the wire: head and body in one buffer, one write.
    fn encode(&self, request: &Request<'_>) -> Vec<u8> {
        use std::io::Write;
        let mut head = Vec::with_capacity(256 + request.token.len() + request.body.map_or(0, <[u8]>::len));
        let _ = write!(
            head,
            "{} /api/v1{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n",
            request.method, request.path, self.authority, request.token
        );
        if let Some(key) = request.idempotency_key {
            let _ = write!(head, "Idempotency-Key: {key}\r\n");
        }
        match request.body {
            Some(body) => {
                let _ = write!(
                    head,
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                head.extend_from_slice(body);
            }
            None => head.extend_from_slice(b"\r\n"),
        }
        head
    }

    /// An idle connection the server has not closed, if there is one.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(connection) = idle.pop() {
            if connection.idle_since.elapsed() > IDLE_REUSE_MAX {
                continue;
            }
            // Nothing may be waiting on an idle connection: bytes or an end of stream
            // there mean the server has closed it (or broke the protocol).
            let mut probe = [0u8; 1];
            match connection.stream.try_read(&mut probe) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Some(connection.stream),
                _ => continue,
            }
        }
        None
    }

    fn put_idle(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.idle_max {
            idle.push(Connection {
                stream,
                idle_since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<TcpStream, TransportError> {
        let failed = |message: String| TransportError {
            kind: "transport_connect",
            message: format!("connecting to {}: {message}", self.authority),
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| failed(format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|error| failed(error.to_string()))?;
        stream.set_nodelay(true).map_err(|error| failed(error.to_string()))?;
        Ok(stream)
    }
}

/// Write the request whole, read the answer; also says whether the connection may be
/// reused.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<(Reply, bool)> {
    stream.write_all(request).await?;
    read_reply(stream).await
}

fn protocol(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Read one answer from `stream`; also says whether the connection may be reused.
async fn read_reply(stream: &mut TcpStream) -> std::io::Result<(Reply, bool)> {
    let mut buffer: Vec<u8> = Vec::with_capacity(1024);
    let (status, framing, retry_after, replayed, close, head_length) = loop {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                if buffer.is_empty() {
                    "the server closed the connection without answering"
                } else {
                    "the server closed the connection in the middle of an answer"
                },
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        match response
            .parse(&buffer)
            .map_err(|error| protocol(format!("unreadable answer: {error}")))?
        {
            httparse::Status::Partial => {
                if buffer.len() > 64 << 10 {
                    return Err(protocol("answer headers larger than 64 KiB"));
                }
            }
            httparse::Status::Complete(head_length) => {
                let status = response.code.unwrap_or(0);
                let mut framing = Framing::UntilClose;
                let mut retry_after = None;
                let mut replayed = false;
                let mut close = response.version == Some(0);
                for header in response.headers.iter() {
                    let value = std::str::from_utf8(header.value).unwrap_or("").trim();
                    if header.name.eq_ignore_ascii_case("content-length") {
                        let length = value
                            .parse::<usize>()
                            .map_err(|_| protocol(format!("bad content-length {value:?}")))?;
                        framing = Framing::Length(length);
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        if value.eq_ignore_ascii_case("chunked") {
                            framing = Framing::Chunked;
                        }
                    } else if header.name.eq_ignore_ascii_case("retry-after") {
                        retry_after = value.parse::<u64>().ok().map(Duration::from_secs);
                    } else if header.name.eq_ignore_ascii_case("idempotent-replayed") {
                        replayed = value == "true";
                    } else if header.name.eq_ignore_ascii_case("connection") {
                        close = value.eq_ignore_ascii_case("close");
                    }
                }
                // 1xx, 204 and 304 carry no body whatever the headers say.
                if status < 200 || status == 204 || status == 304 {
                    framing = Framing::Length(0);
                }
                break (status, framing, retry_after, replayed, close, head_length);
            }
        }
    };
    let mut rest = buffer.split_off(head_length);
    let (body, reusable) = match framing {
        Framing::Length(length) => {
            if length > BODY_MAX {
                return Err(protocol(format!("answer of {length} bytes is too large")));
            }
            if rest.len() > length {
                // Bytes past the answer: the connection is out of step; do not reuse it.
                rest.truncate(length);
                (rest, false)
            } else {
                let have = rest.len();
                rest.resize(length, 0);
                stream.read_exact(&mut rest[have..]).await?;
                (rest, true)
            }
        }
        Framing::Chunked => (read_chunked(stream, rest).await?, true),
        Framing::UntilClose => {
            stream.read_to_end(&mut rest).await?;
            (rest, false)
        }
    };
    Ok((
        Reply {
            status,
            retry_after,
            replayed,
            body,
        },
        reusable && !close,
    ))
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Decode a chunked body, `pending` holding what was already read past the headers.
async fn read_chunked(stream: &mut TcpStream, mut pending: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut position = 0;
    loop {
        // A size line: hex digits, maybe extensions, CRLF.
        let size_end = loop {
            if let Some(end) = line_end(&pending, position) {
                break end;
            }
            fill(stream, &mut pending).await?;
        };
        let line = std::str::from_utf8(&pending[position..size_end]).map_err(|_| protocol("bad chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| protocol(format!("bad chunk size {size_text:?}")))?;
        position = size_end + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                if let Some(end) = line_end(&pending, position) {
                    if end == position {
                        return Ok(body);
                    }
                    position = end + 2;
                } else {
                    fill(stream, &mut pending).await?;
                }
            }
        }
        if body.len() + size > BODY_MAX {
            return Err(protocol("chunked answer too large"));
        }
        while pending.len() < position + size + 2 {
            fill(stream, &mut pending).await?;
        }
        body.extend_from_slice(&pending[position..position + size]);
        position += size + 2;
    }
}

/// Where the line starting at `from` ends (its CRLF), once it has all arrived.
fn line_end(buffer: &[u8], from: usize) -> Option<usize> {
    buffer[from..]
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|offset| from + offset)
}

async fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let read = stream.read(&mut chunk).await?;
    if read == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection in the middle of a chunked answer",
        ));
    }
    pending.extend_from_slice(&chunk[..read]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers each connection's requests with `answers`, in order, then
    /// closes; returns its base URL.
    async fn scripted(answers: Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for answer in answers {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 1024];
                // Read one request: headers, then the body its content-length announces.
                loop {
                    let read = socket.read(&mut chunk).await.unwrap();
                    seen.extend_from_slice(&chunk[..read]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length: "))
                            .map(|value| value.trim().parse().unwrap())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                socket.write_all(answer).await.unwrap();
            }
        });
        format!("http://{address}")
    }

    fn transport(base: &str) -> Transport {
        Transport::new(base, 4, Duration::from_secs(1), Duration::from_secs(2)).unwrap()
    }

    fn post<'a>(body: &'a [u8]) -> Request<'a> {
        Request {
            method: "POST",
            path: "/transactions/transfer",
            token: "t",
            idempotency_key: Some("k1"),
            body: Some(body),
        }
    }

    #[tokio::test]
    async fn answers_framed_by_length_and_by_chunks_are_read_whole_on_one_connection() {
        let base = scripted(vec![
            b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\nidempotent-replayed: true\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 3\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"b\"\r\n3\r\n:2}\r\n0\r\n\r\n",
        ])
        .await;
        let transport = transport(&base);
        let first = transport.send(&post(b"{}")).await.unwrap();
        assert_eq!(
            (first.status, first.replayed, first.body.as_slice()),
            (201, true, &b"{\"a\":1}"[..])
        );
        let second = transport.send(&post(b"{}")).await.unwrap();
        assert_eq!(second.status, 503);
        assert_eq!(second.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(second.body, b"{\"b\":2}");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused_and_a_lost_answer_is_an_error() {
        // One answer, then the server closes: the next request connects again, finds
        // nobody listening, and says so.
        let base = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]).await;
        let transport = transport(&base);
        assert_eq!(transport.send(&post(b"{}")).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let error = transport.send(&post(b"{}")).await.unwrap_err();
        assert_eq!(error.kind, "transport_connect", "{error}");
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_a_transport_error_not_a_reply() {
        let base = scripted(vec![b"HTTP/1.1 201 Created\r\ncontent-length: 50\r\n\r\n{\"partial"]).await;
        let error = transport(&base).send(&post(b"{}")).await.unwrap_err();
        assert_eq!(error.kind, "transport_other", "{error}");
        assert!(error.message.contains("new connection"), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_in_time_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(socket);
        });
        let transport = Transport::new(&base, 4, Duration::from_secs(1), Duration::from_millis(200)).unwrap();
        let error = transport.send(&post(b"{}")).await.unwrap_err();
        assert_eq!(error.kind, "transport_timeout", "{error}");
    }

    #[test]
    fn only_plain_http_targets_are_accepted() {
        let error =
            Transport::new("https://127.0.0.1:1", 1, Duration::from_secs(1), Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("plain http"), "{error}");
    }
}
