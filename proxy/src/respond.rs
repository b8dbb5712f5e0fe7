//! Answers the sidecar writes itself. Every one says why in `floodgate-reason`, carries a
//! problem+json body (RFC 9457), and is counted; gRPC callers get a gRPC status in a
//! trailers-only response instead, because they cannot read an HTTP error status.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Why the sidecar answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Could not connect to the upstream.
    UpstreamUnavailable,
    /// The upstream did not answer within `read_timeout_ms`.
    UpstreamTimeout,
    /// The upstream broke the response (reset, malformed).
    UpstreamError,
    /// The request header block exceeded `server.max_request_header_bytes`.
    HeadersTooLarge,
    /// The request could not be parsed.
    BadRequest,
    /// A rate limit rejected the request.
    RateLimited,
    /// The admission queue was full.
    QueueFull,
    /// The request waited `queue.timeout_ms` (or its gRPC deadline) without getting a slot,
    /// or its deadline was shorter than the expected wait.
    QueueTimeout,
    /// The upstream's circuit breaker is open.
    CircuitOpen,
    /// The route's feature is off (or shed by priority at a degraded level): its fallback.
    Degraded,
    /// Aggressive caching answered from the response cache.
    Cached,
}

impl Reason {
    /// Value of `floodgate-reason` and of the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::BadRequest => "bad_request",
            Reason::RateLimited => "rate_limited",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::CircuitOpen => "circuit_open",
            Reason::Degraded => "degraded",
            Reason::Cached => "cached",
        }
    }

    /// The problem type's last part (RFC 9457 `type`).
    fn problem_type(self) -> &'static str {
        match self {
            Reason::Degraded => "temporary-reduced-capacity",
            r => r.as_str(),
        }
    }

    /// True for refusals by policy (counted in `floodgate_shed_total`), as opposed to
    /// failures of the upstream or of the request.
    pub fn is_shed(self) -> bool {
        matches!(
            self,
            Reason::RateLimited | Reason::QueueFull | Reason::QueueTimeout | Reason::CircuitOpen
        )
    }

    /// HTTP status for plain HTTP callers.
    pub fn status(self) -> u16 {
        match self {
            Reason::UpstreamUnavailable | Reason::UpstreamError => 502,
            Reason::UpstreamTimeout => 504,
            Reason::HeadersTooLarge => 431,
            Reason::BadRequest => 400,
            Reason::RateLimited => 429,
            Reason::QueueFull | Reason::QueueTimeout | Reason::CircuitOpen | Reason::Degraded => {
                503
            }
            Reason::Cached => 200,
        }
    }

    /// gRPC status code (UNAVAILABLE = 14, DEADLINE_EXCEEDED = 4, INVALID_ARGUMENT = 3,
    /// RESOURCE_EXHAUSTED = 8): a full queue is RESOURCE_EXHAUSTED like a rate limit, a queue
    /// timeout or an open breaker UNAVAILABLE, the status gRPC clients retry with backoff.
    fn grpc_status(self) -> &'static str {
        match self {
            Reason::UpstreamUnavailable | Reason::UpstreamError => "14",
            Reason::UpstreamTimeout => "4",
            Reason::HeadersTooLarge | Reason::BadRequest => "3",
            Reason::RateLimited | Reason::QueueFull => "8",
            Reason::QueueTimeout | Reason::CircuitOpen | Reason::Degraded => "14",
            Reason::Cached => "0",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Reason::UpstreamUnavailable => {
                "the sidecar could not connect to the application (upstream.address)"
            }
            Reason::UpstreamTimeout => {
                "the application did not answer within upstream.read_timeout_ms"
            }
            Reason::UpstreamError => "the application's response broke off or was malformed",
            Reason::HeadersTooLarge => "request headers exceed server.max_request_header_bytes",
            Reason::BadRequest => "the request is not valid HTTP",
            Reason::RateLimited => "the request rate is over a configured limit",
            Reason::QueueFull => {
                "every upstream slot is busy and the admission queue is full (queue.max_size)"
            }
            Reason::QueueTimeout => "no upstream slot became free within queue.timeout_ms",
            Reason::CircuitOpen => {
                "the upstream has been failing and the circuit breaker is open; it will probe again"
            }
            Reason::Degraded => {
                "this feature is switched off while the service runs at reduced capacity"
            }
            Reason::Cached => "served from the response cache",
        }
    }
}

/// True when the request is gRPC (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Writes the sidecar's own answer for `reason`. Returns the HTTP status written.
pub async fn send(session: &mut Session, reason: Reason) -> pingora_error::Result<u16> {
    send_with(session, reason, None, |_| Ok(())).await
}

/// Like [`send`], with a specific `detail` for the problem body (JSON-escaped here) and
/// `extra` response headers.
pub async fn send_with(
    session: &mut Session,
    reason: Reason,
    detail: Option<&str>,
    extra: impl FnOnce(&mut ResponseHeader) -> pingora_error::Result<()>,
) -> pingora_error::Result<u16> {
    if is_grpc(session) {
        let mut h = ResponseHeader::build(200, Some(8))?;
        extra(&mut h)?;
        h.insert_header("content-type", "application/grpc")?;
        h.insert_header("grpc-status", reason.grpc_status())?;
        h.insert_header("grpc-message", reason.as_str())?;
        h.insert_header("floodgate-reason", reason.as_str())?;
        session.write_response_header(Box::new(h), true).await?;
        return Ok(200);
    }
    let status = reason.status();
    // serde_json quotes and escapes the detail (it may carry a limit name from the config).
    let detail = serde_json::to_string(detail.unwrap_or(reason.detail())).unwrap_or_default();
    let body = format!(
        "{{\"type\":\"urn:floodgate:problem:{t}\",\"title\":\"{r}\",\"status\":{status},\"detail\":{detail}}}\n",
        r = reason.as_str(),
        t = reason.problem_type(),
    );
    let mut h = ResponseHeader::build(status, Some(8))?;
    extra(&mut h)?;
    h.insert_header("content-type", "application/problem+json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("floodgate-reason", reason.as_str())?;
    if status == 431 || status == 400 {
        // A client that sent a bad head may have sent more we will not read: close after.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(status)
}

/// Writes a configured static fallback answer for `reason`.
pub async fn send_static(
    session: &mut Session,
    reason: Reason,
    a: &floodgate_config::StaticAnswer,
) -> pingora_error::Result<u16> {
    let mut h = ResponseHeader::build(a.status, Some(4 + a.headers.len()))?;
    if let Some(ct) = &a.content_type {
        h.insert_header("content-type", ct.as_str())?;
    }
    for (n, v) in &a.headers {
        h.insert_header(n.clone(), v.as_str())?;
    }
    h.insert_header("floodgate-reason", reason.as_str())?;
    write_body(session, h, Bytes::from(a.body.clone())).await?;
    Ok(a.status)
}

/// Replays a stored answer byte for byte, with its `age` and `floodgate-reason`.
pub async fn send_stored(
    session: &mut Session,
    reason: Reason,
    s: &floodgate_policy::cache::Stored,
    age: std::time::Duration,
) -> pingora_error::Result<u16> {
    let mut h = ResponseHeader::build(s.status, Some(s.headers.len() + 3))?;
    for (n, v) in &s.headers {
        h.append_header(n.clone(), v.clone())?;
    }
    h.insert_header("age", age.as_secs().to_string())?;
    h.insert_header("floodgate-reason", reason.as_str())?;
    write_body(session, h, s.body.clone()).await?;
    Ok(s.status.as_u16())
}

/// Writes a head with `content-length` and the body (not for HEAD requests).
async fn write_body(
    session: &mut Session,
    mut h: ResponseHeader,
    body: Bytes,
) -> pingora_error::Result<()> {
    h.insert_header("content-length", body.len().to_string())?;
    if session.req_header().method == http::Method::HEAD || body.is_empty() {
        session.write_response_header(Box::new(h), true).await?;
        return Ok(());
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}
