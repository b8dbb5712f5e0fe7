//! Heads on the fast path, as bytes: which requests it serves (the rest go to pingora-proxy
//! untouched), the request forwarded with Floodgate's fields added, and the upstream's
//! response head checked, framed and rewritten the way pingora writes it. Plain functions over
//! byte slices, unit-tested without sockets.

use floodgate_policy::HeaderLookup;

/// Headers a fast-path head may have; a head with more goes to pingora (which takes more).
pub const MAX_HEADERS: usize = 48;

/// A request head's fields, as the fast path reads them (names as sent).
pub struct Fields<'h, 'b>(pub &'h [httparse::Header<'b>]);

impl HeaderLookup for Fields<'_, '_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What the bytes read so far hold.
pub enum Parsed<'b> {
    /// Not a whole head yet.
    Partial,
    /// A request the fast path serves.
    Lean(Request<'b>),
    /// Anything else (a parse error included): pingora-proxy reads it from the same bytes,
    /// so every answer to an unusual or hostile head stays pingora's and Floodgate's shell's.
    Other,
}

/// A request head the fast path serves: HTTP/1.1, origin-form, one `Host`, no hop-by-hop or
/// framing field but at most one plain `Content-Length`, every line ending in CRLF.
pub struct Request<'b> {
    /// Length of the head, final CRLF included.
    pub head_len: usize,
    /// Length of the body (`Content-Length`).
    pub body_len: usize,
    /// How much of the body the bytes read hold (the rest is streamed to the upstream).
    pub in_hand: usize,
    pub method: &'b str,
    /// The request target as sent (path and query).
    pub target: &'b str,
    pub host: &'b str,
}

impl Request<'_> {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// Fields that make a request pingora's: framing and connection management it negotiates
/// (`connection`, `transfer-encoding`, `upgrade`, `expect`, ...), the fields Floodgate sets
/// itself (`x-forwarded-*`), and gRPC's content type (gRPC callers get gRPC answers).
fn needs_pingora(name: &str, value: &[u8], extra: &[&str]) -> bool {
    const HOP: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "expect",
        "x-forwarded-for",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.eq_ignore_ascii_case("x-forwarded-proto")
        || extra.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (name.eq_ignore_ascii_case("content-type")
            && value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// `HeaderValue::to_str`'s rule: visible ASCII and tabs only.
fn visible(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// A `Content-Length` value: digits only.
fn length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Classifies the bytes read so far. `extra` names fields Floodgate sets on the forwarded
/// request (the degradation fields), which a client's own would collide with.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
    extra: &[&str],
) -> (Parsed<'b>, &'h [httparse::Header<'b>]) {
    // Empty lines before a request (RFC 9112 §2.2) are pingora's to skip: the head is
    // forwarded as read.
    if buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
        return (Parsed::Other, &[]);
    }
    let mut req = httparse::Request::new(&mut headers[..]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return (Parsed::Partial, &[]),
        Err(_) => return (Parsed::Other, &[]),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return (Parsed::Other, &[]);
    };
    // A fragment is the client's own (pingora strips it before routing): pingora's.
    if !target.starts_with('/') || method == "CONNECT" || target.contains('#') {
        return (Parsed::Other, &[]);
    }
    let fields: &'h [httparse::Header<'b>] = req.headers;
    let mut host = None;
    let mut body_len = 0;
    let mut lengths = 0;
    for h in fields {
        if needs_pingora(h.name, h.value, extra) {
            return (Parsed::Other, &[]);
        }
        if h.name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return (Parsed::Other, &[]);
            }
            host = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match length(h.value) {
                Some(n) if lengths == 1 => body_len = n,
                _ => return (Parsed::Other, &[]),
            }
        }
    }
    // Userinfo in `Host` is pingora's to refuse (400).
    let Some(host) = host
        .and_then(visible)
        .filter(|h| !h.is_empty() && !h.contains('@'))
    else {
        return (Parsed::Other, &[]);
    };
    // Every line ends in CRLF: the head is forwarded as read, so it must be clean.
    if buf[..head_len]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
    {
        return (Parsed::Other, &[]);
    }
    let r = Request {
        head_len,
        body_len,
        in_hand: body_len.min(buf.len() - head_len),
        method,
        target,
        host,
    };
    (Parsed::Lean(r), fields)
}

/// Size of the head as the shell's `header_bytes` counts it, so that
/// `server.max_request_header_bytes` means the same on both paths.
pub fn header_bytes(target: &str, fields: &[httparse::Header<'_>]) -> usize {
    fields.iter().fold(target.len() + 16, |n, h| {
        n + h.name.len() + h.value.len() + 4
    })
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, or `content-length: 0`).
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked, forwarded as it comes.
    Chunked,
    /// Until the upstream closes: forwarded to the client chunked (as pingora-proxy does), the
    /// upstream connection not reused.
    Close,
    /// Until the upstream closes, with a transfer coding other than chunked last: forwarded
    /// as it comes, and the client's connection closed after it (its only end).
    Raw,
}

/// An upstream response head, parsed.
pub struct Response {
    /// Length of the head, final CRLF included.
    pub head_len: usize,
    /// The head has a transfer coding: its `Content-Length`, if any, is not forwarded.
    pub coded: bool,
    pub status: u16,
    pub framing: Framing,
    /// The upstream's connection may carry another request after this one.
    pub reusable: bool,
    /// The client's connection stays open after this response.
    pub keep_alive: bool,
}

/// Why an upstream response head is refused (the client gets 502).
#[derive(Debug, PartialEq, Eq)]
pub enum Broken {
    /// Not HTTP, or framing that cannot be trusted (two lengths, a coding after chunked).
    Malformed,
    /// A `101` to a request that asked for no upgrade.
    Upgrade,
}

/// How the client's response head is written from the upstream's (see [`parse_response`]).
pub struct Rewrite<'a> {
    /// Where the head goes.
    pub out: &'a mut Vec<u8>,
    /// The client's connection may stay open (a body only its close can end closes it).
    pub keep_alive: bool,
    /// `Date`'s value.
    pub date: &'a [u8],
    /// Fields added last (the rate-limit fields), replacing the upstream's of the same name.
    pub fields: &'a [(&'a str, &'a [u8])],
}

/// Fields a parse takes on the stack; a head with more is parsed again with pingora's limit.
const STACK_FIELDS: usize = 64;
/// pingora-core's limit of fields in a response head.
const MAX_FIELDS: usize = 256;

/// Parses an upstream response head from `buf` (pingora-core's client parser options) and,
/// for a final one, writes the client's head into `w`; `Ok(None)` when more bytes are needed.
/// Informational heads (1xx but 101) come back with their status, written as they came: the
/// caller passes them on and reads on, as pingora does.
///
/// The client's head is written the way pingora-proxy writes it: the status line from its
/// parts (HTTP/1.1 when a close-delimited body is re-framed as chunked), then every field as
/// `name: value` (white space around the name gone, an obsolete line fold replaced by spaces,
/// RFC 9112 §5.1–5.2) but `connection` and `date`, which are set here (`Date` from pingora's
/// cached clock, `Connection` by whether the client's connection stays open), and but
/// `content-length` beside a transfer coding; `transfer-encoding: chunked` for a
/// close-delimited body; then `w.fields`.
pub fn parse_response(
    buf: &[u8],
    head_req: bool,
    w: &mut Rewrite<'_>,
) -> Result<Option<Response>, Broken> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    match parse_with(buf, head_req, w, &mut stack) {
        Err(None) => {
            let mut heap = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
            parse_with(buf, head_req, w, &mut heap).map_err(|_| Broken::Malformed)
        }
        r => r.map_err(|e| e.unwrap_or(Broken::Malformed)),
    }
}

/// [`parse_response`] with `headers` for the fields; `Err(None)`: more fields than that.
fn parse_with<'b>(
    buf: &'b [u8],
    head_req: bool,
    w: &mut Rewrite<'_>,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Response>, Option<Broken>> {
    let mut resp = httparse::Response::new(headers);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let head_len = match config.parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(None),
        Err(_) => return Err(Some(Broken::Malformed)),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(Some(Broken::Malformed));
    };
    if status == 101 {
        return Err(Some(Broken::Upgrade));
    }
    if status < 100 {
        return Err(Some(Broken::Malformed));
    }
    if status < 200 {
        // Informational: passed on as it came, its fields normalized, with nothing of the
        // sidecar's (pingora does not add `Date` or `Connection` to a 1xx either).
        write_info(
            w.out,
            version,
            status,
            resp.reason.unwrap_or(""),
            resp.headers,
        );
        return Ok(Some(Response {
            head_len,
            coded: false,
            status,
            framing: Framing::Empty,
            reusable: false,
            keep_alive: w.keep_alive,
        }));
    }
    let mut reusable = version == 1;
    let (mut len, mut chunked, mut coded) = (None, false, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = length(h.value.trim_ascii()).ok_or(Some(Broken::Malformed))?;
            if len.is_some_and(|l| l != n) {
                return Err(Some(Broken::Malformed));
            }
            len = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            // Only the last coding says how the message ends.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                reusable = false;
            }
        }
    }
    // With a transfer coding, `Content-Length` says nothing (RFC 9112 §6.3): it is dropped
    // from the client's head, and a connection that sent both is not trusted with another.
    if coded && len.is_some() {
        reusable = false;
    }
    let framing = if head_req || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if coded && chunked && version == 1 {
        Framing::Chunked
    } else if coded {
        // A coding other than chunked last, or any in an HTTP/1.0 message, whose framing is
        // then faulty (RFC 9112 §6.1): only the close ends it.
        Framing::Raw
    } else {
        match len {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n as u64),
            None => Framing::Close,
        }
    };
    if matches!(framing, Framing::Close | Framing::Raw) {
        reusable = false;
    }
    let r = Response {
        head_len,
        coded,
        status,
        framing,
        reusable,
        keep_alive: w.keep_alive && framing != Framing::Raw,
    };
    write_head(w, &r, version, resp.reason.unwrap_or(""), resp.headers);
    Ok(Some(r))
}

/// A status line and its fields, `name: value`, white space around names and folds gone.
fn write_fields(
    out: &mut Vec<u8>,
    version: u8,
    status: u16,
    reason: &str,
    fields: &[httparse::Header<'_>],
    skip: impl Fn(&str) -> bool,
) {
    out.extend_from_slice(if version == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(headers_int(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in fields {
        let name = h.name.trim_ascii();
        if skip(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        let value = h.value.trim_ascii();
        if value.iter().any(|&b| b == b'\r' || b == b'\n') {
            // An obsolete line fold: each CR and LF becomes a space.
            out.extend(
                value
                    .iter()
                    .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
        } else {
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn write_info(
    out: &mut Vec<u8>,
    version: u8,
    status: u16,
    reason: &str,
    fields: &[httparse::Header<'_>],
) {
    write_fields(out, version, status, reason, fields, |_| false);
    out.extend_from_slice(b"\r\n");
}

fn write_head(
    w: &mut Rewrite<'_>,
    r: &Response,
    version: u8,
    reason: &str,
    fields: &[httparse::Header<'_>],
) {
    let framing = r.framing;
    // HTTP/1.1 when a close-delimited body is re-framed as chunked.
    let version = if framing == Framing::Close {
        1
    } else {
        version
    };
    let added = w.fields;
    write_fields(w.out, version, r.status, reason, fields, |name| {
        name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("date")
            || (r.coded && name.eq_ignore_ascii_case("content-length"))
            || added.iter().any(|(n, _)| name.eq_ignore_ascii_case(n))
    });
    let out = &mut *w.out;
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(w.date);
    out.extend_from_slice(if r.keep_alive {
        b"\r\nConnection: keep-alive\r\n"
    } else {
        b"\r\nConnection: close\r\n"
    });
    if framing == Framing::Close {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    for (n, v) in w.fields {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A status code's three digits.
fn headers_int(status: u16) -> http::HeaderValue {
    floodgate_policy::headers::int_value(u64::from(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(raw: &[u8]) -> &'static str {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(raw, &mut h, &["x-floodgate-level"]).0 {
            Parsed::Partial => "partial",
            Parsed::Lean(_) => "lean",
            Parsed::Other => "other",
        }
    }

    #[test]
    fn plain_requests_are_the_fast_paths_and_the_rest_pingoras() {
        assert_eq!(classify(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"), "lean");
        assert_eq!(classify(b"GET /a HTTP/1.1\r\nHost: x\r\n"), "partial");
        assert_eq!(
            classify(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
            "lean"
        );
        // A body still coming is streamed.
        assert_eq!(
            classify(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab"),
            "lean"
        );
        // HTTP/1.0; absolute-form; no or two hosts; framing and connection fields;
        // Floodgate's own fields; gRPC; bare LF; bad heads.
        for other in [
            &b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET /a HTTP/1.1\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\n\n",
            b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na",
            b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nx-floodgate-level: normal\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-type: application/grpc\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: u@x\r\n\r\n",
            b"GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(
                classify(other),
                "other",
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn header_bytes_count_as_the_shell_counts() {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw = b"GET /abc HTTP/1.1\r\nHost: x\r\nA: bb\r\n\r\n";
        let (Parsed::Lean(r), f) = parse_request(raw, &mut h, &[]) else {
            panic!()
        };
        assert_eq!(
            header_bytes(r.target, f),
            4 + 16 + (4 + 1 + 4) + (1 + 2 + 4)
        );
        assert_eq!(Fields(f).header("a"), Some(&b"bb"[..]));
        assert_eq!(Fields(f).header("b"), None);
    }

    fn parse(raw: &[u8], head: bool) -> Result<Option<(Framing, bool)>, Broken> {
        let mut out = Vec::new();
        let mut w = Rewrite {
            out: &mut out,
            keep_alive: true,
            date: b"now",
            fields: &[],
        };
        parse_response(raw, head, &mut w).map(|r| r.map(|r| (r.framing, r.reusable)))
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let f = parse;
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok(Some((Framing::Length(5), true)))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok(Some((Framing::Empty, true)))
        );
        assert_eq!(
            f(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Some((Framing::Empty, true)))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Chunked, true)))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Raw, false)))
        );
        assert_eq!(
            f(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Raw, false)))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Some((Framing::Close, false)))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Length(1), false)))
        );
        assert_eq!(
            f(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok(Some((Framing::Length(1), false)))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(Broken::Malformed)
        );
        assert_eq!(
            f(b"HTTP/1.1 101 Switching\r\n\r\n", false),
            Err(Broken::Upgrade)
        );
        assert_eq!(f(b"HTTP/1.1 200 OK\r\nContent-Le", false), Ok(None));
        assert!(f(b"HTTX/1.1 200 OK\r\n\r\n", false).is_err());
        // More fields than the stack holds: parsed again with pingora's limit.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"content-length: 0\r\n\r\n");
        assert_eq!(f(&many, false), Ok(Some((Framing::Empty, true))));
    }

    fn write(head: &[u8], keep: bool, fields: &[(&str, &[u8])]) -> String {
        let mut out = Vec::new();
        let mut w = Rewrite {
            out: &mut out,
            keep_alive: keep,
            date: b"now",
            fields,
        };
        parse_response(head, false, &mut w).unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_clients_head_is_rewritten_as_pingora_writes_it() {
        let head = b"HTTP/1.1 200 OK\r\nServer: app\r\nconnection: keep-alive\r\nDate: old\r\nX-RateLimit-Limit: 9\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            write(head, false, &[("x-ratelimit-limit", b"5")]),
            "HTTP/1.1 200 OK\r\nServer: app\r\nContent-Length: 2\r\nDate: now\r\nConnection: close\r\nx-ratelimit-limit: 5\r\n\r\n"
        );
        assert_eq!(
            write(b"HTTP/1.0 200 OK\r\nA: 1\r\n\r\n", true, &[]),
            "HTTP/1.1 200 OK\r\nA: 1\r\nDate: now\r\nConnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // Bare LF lines come out as CRLF; with a coding, Content-Length is dropped.
        assert_eq!(
            write(b"HTTP/1.1 200 OK\nA: 1\nContent-Length: 0\nTransfer-Encoding: chunked\n\n", true, &[]),
            "HTTP/1.1 200 OK\r\nA: 1\r\nTransfer-Encoding: chunked\r\nDate: now\r\nConnection: keep-alive\r\n\r\n"
        );
        // White space before the colon goes; a folded value is joined with spaces.
        assert_eq!(
            write(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\nX-A: a\r\n b\r\n\r\n", true, &[]),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a   b\r\nDate: now\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}
