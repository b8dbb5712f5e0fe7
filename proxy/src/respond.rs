//! Answers the sidecar writes itself. Every one says why in `floodgate-reason`, carries a
//! problem+json body (RFC 9457), and is counted; gRPC callers get a gRPC status in a
//! trailers-only response instead, because they cannot read an HTTP error status. The
//! mapping from reasons to gRPC statuses is [`Reason::grpc_status`].

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
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

    /// The gRPC status gRPC callers get (they cannot read an HTTP status). RESOURCE_EXHAUSTED
    /// is the rate limit's alone ("you asked too much"); everything else the sidecar refuses
    /// or could not reach is UNAVAILABLE, the status gRPC clients retry with backoff (as
    /// Envoy maps 502/503). The upstream's own silence past `read_timeout_ms` is
    /// DEADLINE_EXCEEDED, and so is a queue wait cut by the caller's deadline (given by the
    /// caller of [`send_full`]). Never UNKNOWN, CANCELLED or INTERNAL: those say the server
    /// broke.
    pub fn grpc_status(self) -> u8 {
        match self {
            Reason::RateLimited => grpc::RESOURCE_EXHAUSTED,
            Reason::HeadersTooLarge | Reason::BadRequest => grpc::INVALID_ARGUMENT,
            Reason::UpstreamTimeout => grpc::DEADLINE_EXCEEDED,
            Reason::UpstreamUnavailable
            | Reason::UpstreamError
            | Reason::QueueFull
            | Reason::QueueTimeout
            | Reason::CircuitOpen
            | Reason::Degraded => grpc::UNAVAILABLE,
            Reason::Cached => grpc::OK,
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

/// The gRPC status codes the sidecar answers with (grpc/grpc `doc/statuscodes.md`).
pub mod grpc {
    /// OK.
    pub const OK: u8 = 0;
    /// INVALID_ARGUMENT.
    pub const INVALID_ARGUMENT: u8 = 3;
    /// DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// RESOURCE_EXHAUSTED.
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    /// UNAVAILABLE.
    pub const UNAVAILABLE: u8 = 14;
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
    send_full(session, reason, None, detail, extra).await
}

/// Like [`send_with`], with the gRPC status for gRPC callers given (else the reason's).
pub async fn send_full(
    session: &mut Session,
    reason: Reason,
    grpc_status: Option<u8>,
    detail: Option<&str>,
    extra: impl FnOnce(&mut ResponseHeader) -> pingora_error::Result<()>,
) -> pingora_error::Result<u16> {
    if is_grpc(session) {
        let status = grpc_status.unwrap_or(reason.grpc_status());
        let message = match detail {
            Some(d) => format!("{}: {d}", reason.as_str()),
            None => format!("{}: {}", reason.as_str(), reason.detail()),
        };
        return send_grpc(session, reason, status, &message, extra).await;
    }
    let status = reason.status();
    let body = problem(reason, detail);
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

/// The problem+json body (RFC 9457) of the sidecar's own answer for `reason`, with `detail`
/// (JSON-escaped here) or the reason's own.
pub fn problem(reason: Reason, detail: Option<&str>) -> String {
    let status = reason.status();
    // serde_json quotes and escapes the detail (it may carry a limit name from the config).
    let detail = serde_json::to_string(detail.unwrap_or(reason.detail())).unwrap_or_default();
    format!(
        "{{\"type\":\"urn:floodgate:problem:{t}\",\"title\":\"{r}\",\"status\":{status},\"detail\":{detail}}}\n",
        r = reason.as_str(),
        t = reason.problem_type(),
    )
}

/// Writes a gRPC answer that every gRPC client reads: a trailers-only response (RFC 9113
/// HEADERS with END_STREAM: `:status 200`, `content-type: application/grpc`, `grpc-status`,
/// the percent-encoded `grpc-message`, `floodgate-reason` and `extra`). Returns 200.
///
/// On HTTP/2 the head goes through the HTTP/2 session itself, not through
/// `pingora_proxy::Session::write_response_header`: pingora-proxy 0.9.1 does not pass that
/// call's end-of-stream flag on to HTTP/2, so the HEADERS frame would leave without
/// END_STREAM and the session's `finish()` would end the stream with an empty DATA frame,
/// which gRPC C-core rejects ("Data frame with END_STREAM flag received", status UNKNOWN).
/// gRPC needs HTTP/2; an HTTP/1.1 caller that says `application/grpc` gets the same fields
/// in an empty response.
pub async fn send_grpc(
    session: &mut Session,
    reason: Reason,
    status: u8,
    message: &str,
    extra: impl FnOnce(&mut ResponseHeader) -> pingora_error::Result<()>,
) -> pingora_error::Result<u16> {
    let mut h = ResponseHeader::build(200, Some(10))?;
    extra(&mut h)?;
    h.insert_header("content-type", "application/grpc")?;
    h.insert_header(
        "grpc-status",
        floodgate_policy::headers::int_value(u64::from(status)),
    )?;
    h.insert_header("grpc-message", grpc_message(message))?;
    h.insert_header("floodgate-reason", reason.as_str())?;
    match session.as_downstream_mut() {
        ServerSession::H2(h2) => h2.write_response_header(Box::new(h), true)?,
        _ => {
            h.insert_header("content-length", "0")?;
            session.write_response_header(Box::new(h), true).await?;
        }
    }
    Ok(200)
}

/// Ends a gRPC call whose response head (the upstream's) is already sent, when the upstream
/// broke off: trailers with UNAVAILABLE, so the client sees a status, not a reset stream
/// (CANCELLED). Returns false when this session cannot carry trailers (HTTP/1.1, or already
/// ended).
pub fn end_grpc_with_trailers(session: &mut Session, reason: Reason) -> bool {
    let ServerSession::H2(h2) = session.as_downstream_mut() else {
        return false;
    };
    let mut t = http::HeaderMap::with_capacity(3);
    t.insert(
        "grpc-status",
        http::HeaderValue::from(u16::from(reason.grpc_status())),
    );
    if let Ok(v) = http::HeaderValue::from_str(&grpc_message(&format!(
        "{}: {}",
        reason.as_str(),
        reason.detail()
    ))) {
        t.insert("grpc-message", v);
    }
    t.insert(
        "floodgate-reason",
        http::HeaderValue::from_static(reason.as_str()),
    );
    h2.write_trailers(t).is_ok()
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself
/// (gRPC over HTTP/2, "Responses").
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_percent_encodes_non_printable_bytes_and_percent() {
        assert_eq!(grpc_message("rate_limited: 3/60 s"), "rate_limited: 3/60 s");
        assert_eq!(
            grpc_message("100% \u{e9}t\u{e9}\n"),
            "100%25 %C3%A9t%C3%A9%0A"
        );
    }

    #[test]
    fn sidecar_answers_never_map_to_unknown_cancelled_or_internal() {
        use Reason::*;
        let all = [
            UpstreamUnavailable,
            UpstreamTimeout,
            UpstreamError,
            HeadersTooLarge,
            BadRequest,
            RateLimited,
            QueueFull,
            QueueTimeout,
            CircuitOpen,
            Degraded,
            Cached,
        ];
        for r in all {
            assert!(![1, 2, 13].contains(&r.grpc_status()), "{r:?}");
        }
        assert_eq!(RateLimited.grpc_status(), grpc::RESOURCE_EXHAUSTED);
        for r in [
            QueueFull,
            QueueTimeout,
            CircuitOpen,
            Degraded,
            UpstreamUnavailable,
            UpstreamError,
        ] {
            assert_eq!(r.grpc_status(), grpc::UNAVAILABLE, "{r:?}");
        }
    }
}
