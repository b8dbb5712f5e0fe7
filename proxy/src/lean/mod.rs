//! The HTTP/1.1 fast path: Floodgate's own loop over a client connection, on pingora-core's
//! listener, runtime and streams but not on pingora-proxy (issue 17: pingora-proxy and its
//! header maps were ~75k of the ~88k instructions a forwarded request cost).
//!
//! It serves the plain request only: HTTP/1.1, origin-form, one `Host`, no connection or
//! framing fields but one `Content-Length` (a body still coming is streamed), a path already
//! canonical, and a route the degradation state lets straight through or answers with a
//! static fallback ([`head::parse_request`], [`Lean::gate`]). It decides before anything has
//! an effect, and everything else — h2c, upgrades, chunked request bodies, unusual or hostile
//! heads, cached fallbacks, feature breakers and the cache — goes to pingora-proxy and
//! Floodgate's shell on the same connection, with the bytes already read handed over as
//! pingora's pipelined prefix ([`Lean::hand_over`]). What it does serve, it serves with the
//! shell's own steps ([`Floodgate::check_limits`], the breaker and the admission queue,
//! [`Floodgate::finish`]) and answers as the shell does: the same statuses, fields and bodies,
//! `Date` and `Connection` set as pingora sets them.
//!
//! Heads go through as read, with Floodgate's fields added; no header map is built. Upstream
//! connections are kept in a pool of its own (idle ones dropped past `idle_timeout_ms` when
//! next looked at: no timer per connection); each is looked at with one non-blocking peek
//! before reuse, and an idempotent request, all in hand, that meets one the upstream had
//! closed is sent once more on a new one.

mod chunked;
pub mod head;

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use floodgate_config::{PathNormalization, UpstreamProtocol};
use floodgate_policy::breaker;
use floodgate_policy::path;
use floodgate_policy::queue::Admit;
use floodgate_policy::{headers, RequestParts};
use http::{HeaderValue, Method};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::Guarded;
use crate::respond::Reason;
use crate::router::RequestView;
use crate::shell::{self, Ctx, Finished, Floodgate};
use crate::state::Snapshot;
use chunked::Chunked;
use head::{Fields, Framing, Parsed};

/// A client connection's read buffer to begin with: small, since a queued request keeps it
/// (and with it whatever of the body came with the head). It grows for a longer head.
const HEAD_BUF: usize = 1024;
/// The longest head the fast path reads; a longer one is pingora's.
const MAX_HEAD: usize = 16 * 1024;
/// An upstream connection's read buffer (it stays with the connection in the pool, so an
/// idle client connection holds none).
const UP_BUF: usize = 16 * 1024;
/// Most bytes of an upstream response head (pingora-core's limit).
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;
/// How long one read of a request body may wait (pingora's HTTP/1 server default).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle upstream connections kept per listener.
const POOL_MAX: usize = 256;

/// The fast path of one listener, in front of its pingora-proxy application.
pub struct Lean {
    shell: Floodgate,
    proxy: Arc<HttpProxy<Floodgate>>,
    connector: TransportConnector,
    pool: Mutex<Vec<Idle>>,
    /// pingora's shutdown reached this service: idle client connections close.
    closing: AtomicBool,
    /// `floodgate_http1_path_total{path="fast"}` and `{path="handed_over"}`.
    served: prometheus::IntCounter,
    handed_over: prometheus::IntCounter,
    closed: tokio::sync::Notify,
}

/// An upstream connection and its buffers.
struct Upstream {
    stream: Stream,
    /// Bytes read from the upstream (and a request body's chunks on their way to it).
    ub: BytesMut,
    /// Bytes being written: the forwarded request, then the client's response head.
    out: Vec<u8>,
}

/// An idle upstream connection.
struct Idle {
    addr: SocketAddr,
    up: Upstream,
    since: Instant,
}

/// A client connection on the fast path.
struct Conn {
    stream: Stream,
    /// Bytes read from the client and not yet consumed.
    rb: BytesMut,
    /// The connection's first request (its deadline is the accept's; no keep-alive wait).
    first: bool,
    /// `server.keepalive_timeout_ms` and `header_read_timeout_ms` of the last exchange's
    /// snapshot, for the wait before the next head (the next snapshot is loaded once the
    /// head is in, so that a request sees the config of its own time).
    keepalive: Duration,
    head_timeout: Duration,
    client: Option<std::net::IpAddr>,
    /// `x-forwarded-for`'s value: the client's address, formatted once per connection.
    xff: Option<HeaderValue>,
}

/// The degradation gate's decision on the fast path ([`Lean::gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// On to the limits, the breaker and the queue.
    Pass,
    /// The route's fallback (`shed`: a priority shed).
    Fallback { shed: bool },
    /// pingora-proxy's and the shell's.
    Pingora,
}

/// What follows an exchange.
enum Next {
    /// The next request on this connection.
    Again,
    /// Close the connection.
    Close,
    /// Hand the connection, and what was read of it, to pingora-proxy.
    Pingora,
}

/// How a forward failed, as the shell's `classify` names pingora's errors.
enum Failed {
    /// Before the response began: the client gets the sidecar's answer.
    Answer(Reason),
    /// The pooled connection was closed by the upstream before answering: try a new one.
    Stale,
    /// After the response began: the client's connection is cut.
    Cut(Reason, u16),
    /// The client went away.
    Client(u16),
}

/// A request the fast path took on, past its decisions.
struct Taken {
    head_len: usize,
    body_len: usize,
    /// Bytes of the body in the read buffer (the rest is still the client's to send).
    in_hand: usize,
    method: Method,
    /// The path's place in the read buffer (it stays there until the exchange ends).
    path: Range<usize>,
}

impl Lean {
    /// The fast path of `proxy`'s listener. `shell` is the same listener's shell (its steps
    /// are shared).
    pub fn new(shell: Floodgate, proxy: HttpProxy<Floodgate>) -> Self {
        let paths = &shell.runtime().metrics.http1_path;
        Self {
            served: paths.with_label_values(&["fast"]),
            handed_over: paths.with_label_values(&["handed_over"]),
            shell,
            proxy: Arc::new(proxy),
            connector: TransportConnector::new(None),
            pool: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
        }
    }

    /// pingora-proxy's application, for its options.
    pub fn proxy_mut(&mut self) -> Option<&mut HttpProxy<Floodgate>> {
        Arc::get_mut(&mut self.proxy)
    }

    /// True when the connection is one the fast path may serve: HTTP/1 (not the h2c
    /// preface), to a listener that still exists and does not force h2c upstream.
    fn serves(&self, stream: &Stream) -> bool {
        if Guarded::of(Some(stream)).is_none_or(|g| g.is_h2()) {
            return false;
        }
        let snap = self.shell.runtime().current.load();
        let l = snap.lanes.get(self.shell.index()).copied().flatten();
        l.and_then(|l| snap.config.listeners.get(l))
            .is_some_and(|c| c.upstream.protocol != UpstreamProtocol::H2c)
    }

    /// What the degradation state does with a request for route `r`, as the shell's
    /// degradation gate decides it: on to the upstream, a fallback the fast path writes (a
    /// static answer, or the 503 problem), or pingora's (a feature breaker, the cache, a cached
    /// fallback).
    fn gate(&self, snap: &Snapshot, r: usize) -> Gate {
        let (eff, routes) = (&snap.degrade, &snap.routes);
        let (Some(&off), Some(&priority)) = (eff.route_off.get(r), routes.priority.get(r)) else {
            return Gate::Pingora;
        };
        let shed = self.shell.priority_shed(snap, priority);
        if off || shed {
            let cached = routes
                .fallback
                .get(r)
                .and_then(|f| f.as_ref())
                .is_some_and(|f| f.cached.is_some());
            return if cached {
                Gate::Pingora
            } else {
                // A route switched off is not a shed (as in the shell).
                Gate::Fallback { shed: !off }
            };
        }
        let plain = routes.breaker.get(r).is_some_and(|b| b.is_none())
            && !routes.remember.get(r).copied().unwrap_or(true)
            && !(eff.aggressive && routes.aggressive.get(r).copied().unwrap_or(true));
        if plain {
            Gate::Pass
        } else {
            Gate::Pingora
        }
    }

    /// An idle connection to `addr`, the most recent first. Each is looked at for a close or
    /// stray bytes first (one read that would block): bytes an upstream sent after its
    /// response's end would otherwise be read as the next client's response.
    fn take_idle(&self, addr: SocketAddr, idle: Duration) -> Option<Upstream> {
        loop {
            let i = self.pool.lock().ok()?.pop()?;
            let age = i.since.elapsed();
            if i.addr != addr || age >= idle {
                continue;
            }
            let up = i.up;
            if !quiet(&up.stream) {
                continue;
            }
            return Some(up);
        }
    }

    fn put_idle(&self, addr: SocketAddr, mut up: Upstream, idle: Duration) {
        // A long response head grew the buffers: an idle connection keeps ordinary ones.
        if up.ub.capacity() > 2 * UP_BUF {
            up.ub = BytesMut::with_capacity(UP_BUF);
        }
        if up.out.capacity() > 2 * UP_BUF {
            up.out = Vec::with_capacity(1024);
        }
        if let Ok(mut pool) = self.pool.lock() {
            // The oldest are at the bottom: drop those past the idle timeout.
            let expired = pool
                .iter()
                .take_while(|i| i.since.elapsed() >= idle)
                .count();
            pool.drain(..expired);
            if pool.len() < POOL_MAX {
                pool.push(Idle {
                    addr,
                    up,
                    since: Instant::now(),
                });
            }
        }
    }

    /// The client's connection, from its first request on.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|a| a.ip()));
        let server = &self.shell.runtime().current.load().config.server;
        let mut c = Conn {
            stream,
            rb: BytesMut::with_capacity(HEAD_BUF),
            first: true,
            keepalive: server.keepalive_timeout,
            head_timeout: server.header_read_timeout,
            client,
            xff: client.and_then(|ip| crate::forwarded::append_for(None, ip)),
        };
        loop {
            match self.exchange(&mut c).await {
                Next::Again => c.first = false,
                Next::Close => return None,
                Next::Pingora => break,
            }
        }
        Box::pin(self.hand_over(c, shutdown)).await
    }

    /// The rest of the connection is pingora-proxy's, starting from the bytes read.
    async fn hand_over(self: &Arc<Self>, c: Conn, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.handed_over.inc();
        let mut session = ServerSession::new_http1(c.stream);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        if !c.rb.is_empty() {
            session.set_pipelined_prefix(c.rb);
        }
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings {
                s.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
        None
    }

    /// Waits for a whole head in the read buffer. `Err` ends the fast path's part.
    async fn read_head(&self, c: &mut Conn) -> Result<(), Next> {
        let mut waited = false;
        // Part of a head read with the last exchange (pipelined) has no deadline of the
        // guarded stream's: it gets the head timeout here.
        let pipelined = !c.first && !c.rb.is_empty();
        loop {
            if head_end(&c.rb) {
                return Ok(());
            }
            if c.rb.len() >= MAX_HEAD {
                return Err(Next::Pingora);
            }
            let want = if c.rb.len() < HEAD_BUF {
                HEAD_BUF
            } else {
                c.rb.len() * 2
            };
            c.rb.reserve(want.min(MAX_HEAD) - c.rb.len());
            let idle = c.rb.is_empty() && !c.first && !waited;
            waited = true;
            let n = if idle {
                // Between requests: the keep-alive timeout, and pingora's shutdown (the wait
                // for it registered before the flag is read, so a shutdown between is seen).
                let closed = self.closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if self.closing.load(Ordering::Acquire) {
                    return Err(Next::Close);
                }
                tokio::select! {
                    biased;
                    r = tokio::time::timeout(c.keepalive, c.stream.read_buf(&mut c.rb)) => match r {
                        Ok(Ok(n)) => n,
                        _ => return Err(Next::Close),
                    },
                    () = closed => return Err(Next::Close),
                }
            } else if pipelined {
                match tokio::time::timeout(c.head_timeout, c.stream.read_buf(&mut c.rb)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => return Err(Next::Close),
                    Err(_) => {
                        // As the guarded stream answers a partial head past its deadline.
                        let metrics = &self.shell.runtime().metrics;
                        crate::conn::timed_out(&metrics.header_timeouts, true);
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            write_flush(&mut c.stream, crate::conn::TIMEOUT_408),
                        )
                        .await;
                        return Err(Next::Close);
                    }
                }
            } else {
                // The head's deadline is the guarded stream's (server.header_read_timeout_ms).
                c.stream
                    .read_buf(&mut c.rb)
                    .await
                    .map_err(|_| Next::Close)?
            };
            if n == 0 {
                // A client that closes in the middle of a head gets no answer (as from pingora).
                return Err(Next::Close);
            }
        }
    }

    /// Parses the head in the read buffer, decides whether the fast path serves it, and
    /// checks its limits: the request taken on, or what follows instead (`Pingora` before any
    /// decision had an effect, or the end of a refused exchange).
    async fn take(&self, c: &mut Conn, snap: Arc<Snapshot>) -> Result<(Ctx, Taken, usize), Next> {
        let routes = &snap.routes;
        let mut extra: [&str; 2] = [""; 2];
        let mut n_extra = 0;
        for name in [&routes.level_header, &routes.features_header]
            .into_iter()
            .flatten()
        {
            extra[n_extra] = name.as_str();
            n_extra += 1;
        }
        let mut h = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
        let (parsed, fields) = head::parse_request(&c.rb, &mut h, &extra[..n_extra]);
        let Parsed::Lean(req) = parsed else {
            return Err(Next::Pingora);
        };
        let Some(l) = snap.lanes.get(self.shell.index()).copied().flatten() else {
            return Err(Next::Pingora);
        };
        // A reload may have made this listener's upstream h2c since the connection came.
        if snap.config.listeners[l].upstream.protocol == UpstreamProtocol::H2c {
            return Err(Next::Pingora);
        }
        let target_path = req.path();
        match snap.config.server.path_normalization {
            PathNormalization::Off => {}
            PathNormalization::Strict => {
                if path::strict(target_path.as_bytes()).is_err() {
                    return Err(Next::Pingora);
                }
            }
            _ => match path::canonical(target_path.as_bytes()) {
                Ok(std::borrow::Cow::Borrowed(_)) => {}
                Ok(std::borrow::Cow::Owned(p)) if p.as_bytes() == target_path.as_bytes() => {}
                _ => return Err(Next::Pingora),
            },
        }
        let Ok(method) = Method::from_bytes(req.method.as_bytes()) else {
            return Err(Next::Pingora);
        };
        let lookup = Fields(fields);
        let lane = self.shell.lane();
        let view = RequestView {
            method: &method,
            path: target_path,
            host: Some(req.host),
            headers: &lookup,
            listener: &lane.name,
        };
        let route = snap.router.route(&view).0;
        if head::header_bytes(req.target, fields) > snap.config.server.max_request_header_bytes {
            return Err(Next::Pingora);
        }
        let gate = self.gate(&snap, route);
        if gate == Gate::Pingora {
            return Err(Next::Pingora);
        }
        // From here on the request is the fast path's: decisions have effects.
        self.served.inc();
        let mut ctx = self.shell.ctx_for(snap.clone());
        ctx.route = route;
        if let Some(g) = Guarded::of(Some(&c.stream)) {
            g.head_done();
        }
        let base = c.rb.as_ptr() as usize;
        let path_at = target_path.as_ptr() as usize - base;
        let taken = Taken {
            head_len: req.head_len,
            body_len: req.body_len,
            in_hand: req.in_hand,
            method,
            path: path_at..path_at + target_path.len(),
        };
        if let Gate::Fallback { shed } = gate {
            return Err(self.fallback(c, ctx, &taken, shed).await);
        }
        if !snap.limits.is_empty_for(route) {
            let parts = RequestParts {
                client_ip: c.client,
                route: snap.router.name(route),
                method: &taken.method,
                path: target_path,
                headers: &lookup,
            };
            // Boxed, as the forward is: an inline future would size every connection's task
            // for its largest step, a queued request's included.
            let verdict = Box::pin(self.shell.check_limits(&parts, &ctx)).await;
            if let Some(v) = verdict.as_ref().filter(|v| !v.outcome.allowed) {
                let detail = shell::rejection_detail(&snap, v);
                let mut extra = vec![(
                    "retry-after",
                    headers::int_value(shell::rejection_retry_after(v, ctx.start)),
                )];
                let _ = shell::rate_limit_fields(&snap, v, &mut |n, v| {
                    extra.push((n, v));
                    Ok(())
                });
                return Err(self
                    .answer(c, ctx, &taken, Reason::RateLimited, Some(&detail), &extra)
                    .await);
            }
            ctx.limit = verdict;
        }
        Ok((ctx, taken, l))
    }

    /// One request on the fast path, or the decision that it is pingora's.
    async fn exchange(self: &Arc<Self>, c: &mut Conn) -> Next {
        if let Err(next) = self.read_head(c).await {
            return next;
        }
        let snap = self.shell.runtime().current.load_full();
        c.keepalive = snap.config.server.keepalive_timeout;
        c.head_timeout = snap.config.server.header_read_timeout;
        // The head's parse and the limits in a step of their own, boxed: its fields' array
        // (1.5 KiB) would otherwise be part of this future's size, which a queued request's
        // task holds.
        let (mut ctx, taken, l) = match Box::pin(self.take(c, snap)).await {
            Ok(t) => t,
            Err(next) => return next,
        };
        let snap = ctx.snap.clone();
        let routes = &snap.routes;
        let route = ctx.route;
        let lane = self.shell.lane();
        if snap.config.circuit_breaker.is_some() {
            let (admit, t) = lane.breaker.admit();
            self.shell.breaker_moved(&ctx, t);
            match admit {
                breaker::Admit::Pass(ticket) => ctx.ticket = Some(ticket),
                breaker::Admit::Reject { retry_after } => {
                    return self
                        .shed(c, ctx, &taken, Reason::CircuitOpen, retry_after)
                        .await;
                }
            }
        }
        let priority = routes.priority[route];
        match lane.admission.try_acquire(priority) {
            Admit::Now(p) => ctx.permit = Some(p),
            Admit::Full { retry_after } => {
                let retry = retry_after.unwrap_or(self.shell.queue_timeout(&ctx));
                return self.shed(c, ctx, &taken, Reason::QueueFull, retry).await;
            }
            Admit::Wait(waiting) => {
                // A queued request keeps only its own bytes, not the read buffer's capacity.
                if c.rb.capacity() > c.rb.len() * 2 {
                    c.rb = BytesMut::from(&c.rb[..]);
                }
                // A body still coming cannot be watched for a disconnect without reading
                // (buffering) it; as on pingora's path, that is noticed when the wait ends.
                let watch = taken.in_hand == taken.body_len;
                let budget = self.shell.queue_timeout(&ctx);
                let started = Instant::now();
                let m = &self.shell.runtime().metrics;
                let by = [self.shell.listener()];
                let outcome = tokio::select! {
                    r = tokio::time::timeout(budget, waiting) => r.ok(),
                    () = watch_client(c), if watch => {
                        m.queue_wait.with_label_values(m.by_listener(&by)).observe(started.elapsed().as_secs_f64());
                        m.queue_abandoned.with_label_values(m.by_listener(&by)).inc();
                        ctx.abandoned = true;
                        self.done(c, ctx, &taken, 0, None);
                        return Next::Close;
                    }
                };
                m.queue_wait
                    .with_label_values(m.by_listener(&by))
                    .observe(started.elapsed().as_secs_f64());
                match outcome {
                    Some(p) => ctx.permit = Some(p),
                    None => {
                        let retry = lane.admission.retry_after().unwrap_or(budget);
                        return self.shed(c, ctx, &taken, Reason::QueueTimeout, retry).await;
                    }
                }
            }
        }
        Box::pin(self.forward(c, ctx, l, taken)).await
    }

    /// The route's fallback, as the shell's `fallback` answers an HTTP/1.1 caller: the static
    /// answer, else the 503 problem with `Retry-After: 30` (degradation lasts minutes).
    async fn fallback(&self, c: &mut Conn, mut ctx: Ctx, taken: &Taken, shed: bool) -> Next {
        let snap = ctx.snap.clone();
        let r = ctx.route;
        let m = &self.shell.runtime().metrics;
        let feature = snap.routes.feature[r].as_deref().unwrap_or("none");
        m.degraded_responses.with_label_values(&[feature]).inc();
        if shed {
            self.shell.count_shed(Reason::Degraded);
        }
        let Some(a) = snap.routes.fallback[r]
            .as_ref()
            .and_then(|f| f.answer.as_ref())
        else {
            let retry = HeaderValue::from_static(shell::DEGRADED_RETRY_AFTER);
            return self
                .answer(
                    c,
                    ctx,
                    taken,
                    Reason::Degraded,
                    None,
                    &[("retry-after", retry)],
                )
                .await;
        };
        ctx.reason = Some(Reason::Degraded);
        let keep = !self.shell.runtime().is_draining() && taken.in_hand == taken.body_len;
        let mut out = Vec::with_capacity(256 + a.body.len());
        let code = http::StatusCode::from_u16(a.status).unwrap_or(http::StatusCode::OK);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut field = |n: &[u8], v: &[u8]| {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        };
        if let Some(ct) = &a.content_type {
            field(b"content-type", ct.as_bytes());
        }
        for (n, v) in &a.headers {
            field(n.as_bytes(), v.as_bytes());
        }
        field(b"floodgate-reason", Reason::Degraded.as_str().as_bytes());
        field(
            b"content-length",
            headers::int_value(a.body.len() as u64).as_bytes(),
        );
        field(
            b"Date",
            pingora_core::protocols::http::date::get_cached_date().as_bytes(),
        );
        field(
            b"Connection",
            if keep {
                &b"keep-alive"[..]
            } else {
                &b"close"[..]
            },
        );
        out.extend_from_slice(b"\r\n");
        if taken.method != Method::HEAD {
            out.extend_from_slice(a.body.as_bytes());
        }
        let written = write_all(&mut c.stream, &out).await;
        self.done(c, ctx, taken, if written { a.status } else { 0 }, None);
        if written && keep {
            Next::Again
        } else {
            Next::Close
        }
    }

    /// A refusal by policy: 503 with `Retry-After`, counted as shed.
    async fn shed(
        &self,
        c: &mut Conn,
        ctx: Ctx,
        taken: &Taken,
        reason: Reason,
        retry_after: Duration,
    ) -> Next {
        let secs = retry_after.as_secs().max(1) + u64::from(retry_after.subsec_nanos() > 0);
        self.answer(
            c,
            ctx,
            taken,
            reason,
            None,
            &[("retry-after", headers::int_value(secs))],
        )
        .await
    }

    /// Writes the sidecar's own answer (as `respond::send_full` writes it) and ends the
    /// exchange.
    async fn answer(
        &self,
        c: &mut Conn,
        mut ctx: Ctx,
        taken: &Taken,
        reason: Reason,
        detail: Option<&str>,
        extra: &[(&str, HeaderValue)],
    ) -> Next {
        ctx.reason = Some(reason);
        if reason.is_shed() {
            self.shell.count_shed(reason);
        }
        // A body not yet all read would be read as the next request: close after (as the
        // shell does for an answer given before the body was read).
        let keep = !self.shell.runtime().is_draining() && taken.in_hand == taken.body_len;
        let status = reason.status();
        let mut out = Vec::with_capacity(512);
        let head_req = taken.method == Method::HEAD;
        problem(&mut out, reason, detail, keep, head_req, extra);
        let written = write_all(&mut c.stream, &out).await;
        let status = if written { status } else { 0 };
        self.done(c, ctx, taken, status, None);
        if written && keep {
            Next::Again
        } else {
            Next::Close
        }
    }

    /// The exchange is over: counted, logged, its bytes consumed.
    fn done(
        &self,
        c: &mut Conn,
        mut ctx: Ctx,
        taken: &Taken,
        status: u16,
        error: Option<&dyn std::fmt::Display>,
    ) {
        ctx.permit = None;
        let path = std::str::from_utf8(&c.rb[taken.path.clone()]).unwrap_or("/");
        self.shell.finish(
            &mut ctx,
            &Finished {
                client: c.client,
                method: &taken.method,
                path,
                status,
                error,
            },
        );
        c.rb.advance((taken.head_len + taken.in_hand).min(c.rb.len()));
        // A long head's buffer is not kept for the connection's idle time.
        if c.rb.is_empty() && c.rb.capacity() > 4 * HEAD_BUF {
            c.rb = BytesMut::with_capacity(HEAD_BUF);
        }
        if let Some(g) = Guarded::of(Some(&c.stream)) {
            g.response_done();
        }
    }

    /// Sends the request to the upstream and its answer to the client.
    async fn forward(&self, c: &mut Conn, mut ctx: Ctx, l: usize, taken: Taken) -> Next {
        let snap = ctx.snap.clone();
        let up_cfg = &snap.config.listeners[l].upstream;
        let addr = snap.upstreams[l];
        let head_req = taken.method == Method::HEAD;
        let body_left = taken.body_len - taken.in_hand;
        // Sent again after a closed pooled connection only when it is all in hand and may be
        // sent twice (the app may have acted on it before the connection closed).
        let retry = body_left == 0 && taken.method.is_idempotent();
        let mut fresh = false;
        let result = loop {
            let pooled = if fresh {
                None
            } else {
                self.take_idle(addr, up_cfg.idle_timeout)
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(u) => u,
                None => {
                    let mut peer = HttpPeer::new(addr, false, String::new());
                    peer.options.connection_timeout = Some(up_cfg.connect_timeout);
                    match self.connector.new_stream(&peer).await {
                        Ok(stream) => Upstream {
                            stream,
                            ub: BytesMut::with_capacity(UP_BUF),
                            out: Vec::with_capacity(1024),
                        },
                        Err(_) => break Err(Failed::Answer(Reason::UpstreamUnavailable)),
                    }
                }
            };
            request(&mut up.out, c, &taken, &snap);
            let timeouts = (up_cfg.read_timeout, up_cfg.write_timeout);
            match self
                .relay(c, &mut ctx, &mut up, reused, head_req, body_left, timeouts)
                .await
            {
                Err(Failed::Stale) if !fresh && retry => fresh = true,
                Err(Failed::Stale) => break Err(Failed::Answer(Reason::UpstreamError)),
                Ok((status, reusable, keep)) => {
                    if reusable {
                        self.put_idle(addr, up, up_cfg.idle_timeout);
                    }
                    break Ok((status, keep));
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok((status, keep)) => {
                self.done(c, ctx, &taken, status, None);
                if keep {
                    Next::Again
                } else {
                    Next::Close
                }
            }
            Err(Failed::Answer(reason)) => {
                // As the shell's `fail_to_proxy`: the answer says `Connection: close`.
                ctx.reason = Some(reason);
                let status = reason.status();
                let mut out = Vec::with_capacity(512);
                problem(&mut out, reason, None, false, head_req, &[]);
                let written = write_all(&mut c.stream, &out).await;
                let error = failure(reason);
                self.done(
                    c,
                    ctx,
                    &taken,
                    if written { status } else { 0 },
                    Some(&error),
                );
                Next::Close
            }
            Err(Failed::Cut(reason, status)) => {
                ctx.reason = Some(reason);
                let error = failure(reason);
                self.done(c, ctx, &taken, status, Some(&error));
                Next::Close
            }
            Err(Failed::Client(status)) => {
                self.done(c, ctx, &taken, status, Some(&"the client went away"));
                Next::Close
            }
            Err(Failed::Stale) => {
                self.done(c, ctx, &taken, 0, None);
                Next::Close
            }
        }
    }

    /// One try on one upstream connection: the request in `c.out` written, the response
    /// read and written to the client. Returns the status, whether the upstream connection
    /// may be reused, and whether the client's stays open.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        c: &mut Conn,
        ctx: &mut Ctx,
        up: &mut Upstream,
        reused: bool,
        head_req: bool,
        mut body_left: usize,
        (read_timeout, write_timeout): (Duration, Duration),
    ) -> Result<(u16, bool, bool), Failed> {
        let stale = |r: Reason| {
            if reused {
                Failed::Stale
            } else {
                Failed::Answer(r)
            }
        };
        let Upstream {
            stream: us,
            ub,
            out,
        } = up;
        match tokio::time::timeout(write_timeout, write_flush(us, out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(stale(Reason::UpstreamError)),
            Err(_) => return Err(Failed::Answer(Reason::UpstreamTimeout)),
        }
        ub.clear();
        // The rest of the body, as the client sends it (exactly its length: what follows is
        // the client's next request).
        while body_left > 0 {
            ub.reserve(UP_BUF);
            let want = body_left.min(UP_BUF) as u64;
            let mut limited = (&mut c.stream).take(want);
            let n = match tokio::time::timeout(BODY_READ_TIMEOUT, limited.read_buf(ub)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return Err(Failed::Client(0)),
            };
            body_left -= n;
            match tokio::time::timeout(write_timeout, write_flush(us, &ub[..])).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Failed::Answer(Reason::UpstreamError)),
                Err(_) => return Err(Failed::Answer(Reason::UpstreamTimeout)),
            }
            ub.clear();
        }
        // The client's head is written as the upstream's is parsed: its fields first.
        let snap = &ctx.snap;
        let date = pingora_core::protocols::http::date::get_cached_date();
        let mut fields: Vec<(&str, HeaderValue)> = Vec::new();
        if let Some(v) = ctx
            .limit
            .as_ref()
            .filter(|v| shell::fields_on_admitted(snap, v))
        {
            let _ = shell::rate_limit_fields(snap, v, &mut |n, v| {
                fields.push((n, v));
                Ok(())
            });
        }
        let mut named: [(&str, &[u8]); 5] = [("", b""); 5];
        for (slot, (n, v)) in named.iter_mut().zip(&fields) {
            *slot = (n, v.as_bytes());
        }
        out.clear();
        let mut rewrite = head::Rewrite {
            out,
            keep_alive: !self.shell.runtime().is_draining(),
            date: date.as_bytes(),
            fields: &named[..fields.len().min(5)],
        };
        // The response head (informational ones passed on as they come).
        let mut got_any = false;
        let resp = loop {
            // SIGTERM may have come while the upstream worked on this request.
            rewrite.keep_alive = !self.shell.runtime().is_draining();
            match head::parse_response(&ub[..], head_req, &mut rewrite) {
                Ok(Some(r)) if (100..200).contains(&r.status) => {
                    ub.advance(r.head_len);
                    if !write_all(&mut c.stream, rewrite.out).await {
                        return Err(Failed::Client(0));
                    }
                    rewrite.out.clear();
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(_) => return Err(Failed::Answer(Reason::UpstreamError)),
            }
            if ub.len() >= MAX_RESPONSE_HEAD {
                return Err(Failed::Answer(Reason::UpstreamError));
            }
            ub.reserve(UP_BUF);
            match tokio::time::timeout(read_timeout, us.read_buf(ub)).await {
                Err(_) => return Err(Failed::Answer(Reason::UpstreamTimeout)),
                Ok(Ok(n)) if n > 0 => got_any = true,
                Ok(_) if !got_any => return Err(stale(Reason::UpstreamError)),
                Ok(_) => return Err(Failed::Answer(Reason::UpstreamError)),
            }
        };
        let keep = resp.keep_alive;
        ub.advance(resp.head_len);
        let status = resp.status;
        let cut = |r| Failed::Cut(r, status);
        let mut left = match resp.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunks = Chunked::new();
        // The body: what came with the head goes out with it, the rest as it comes.
        let mut complete = false;
        // Nothing written yet: a broken body is still answered 502 instead of cut.
        let mut sent = false;
        loop {
            let avail = ub.len();
            let take = match resp.framing {
                Framing::Empty => 0,
                Framing::Length(_) => {
                    let t = left.min(avail as u64) as usize;
                    left -= t as u64;
                    t
                }
                Framing::Chunked => chunks.feed(&ub[..]).map_err(|_| {
                    if sent {
                        cut(Reason::UpstreamError)
                    } else {
                        Failed::Answer(Reason::UpstreamError)
                    }
                })?,
                Framing::Close | Framing::Raw => avail,
            };
            if resp.framing == Framing::Close && take > 0 {
                out.extend_from_slice(format!("{take:x}\r\n").as_bytes());
                out.extend_from_slice(&ub[..][..take]);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&ub[..][..take]);
            }
            ub.advance(take);
            let finished = match resp.framing {
                Framing::Empty => true,
                Framing::Length(_) => left == 0,
                Framing::Chunked => chunks.done(),
                Framing::Close | Framing::Raw => false,
            };
            if finished {
                // The upstream is done with this request: its slot goes to the next in line.
                ctx.permit = None;
                complete = true;
            }
            if !out.is_empty() {
                if !write_all(&mut c.stream, &out[..]).await {
                    return Err(Failed::Client(status));
                }
                out.clear();
                sent = true;
            }
            if finished {
                break;
            }
            ub.reserve(UP_BUF);
            match tokio::time::timeout(read_timeout, us.read_buf(ub)).await {
                Err(_) => return Err(cut(Reason::UpstreamTimeout)),
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) if matches!(resp.framing, Framing::Close | Framing::Raw) => {
                    ctx.permit = None;
                    if resp.framing == Framing::Close
                        && !write_all(&mut c.stream, b"0\r\n\r\n").await
                    {
                        return Err(Failed::Client(status));
                    }
                    break;
                }
                Ok(_) => return Err(cut(Reason::UpstreamError)),
            }
        }
        let reusable = complete && resp.reusable && ub.is_empty();
        Ok((status, reusable, keep))
    }
}

/// A head ends in the bytes: a blank line (CRLF or bare LF; the parser decides the rest).
fn head_end(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
}

/// The sidecar's own answer for `reason`, as `respond::send_full` and pingora write it: the
/// status line, `extra`, the problem body's fields, then `Date` and `Connection` (which
/// pingora adds last), and the body.
fn problem(
    out: &mut Vec<u8>,
    reason: Reason,
    detail: Option<&str>,
    keep: bool,
    head_req: bool,
    extra: &[(&str, HeaderValue)],
) {
    let body = crate::respond::problem(reason, detail);
    let code = http::StatusCode::from_u16(reason.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in extra {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/problem+json\r\ncontent-length: ");
    out.extend_from_slice(headers::int_value(body.len() as u64).as_bytes());
    out.extend_from_slice(b"\r\nfloodgate-reason: ");
    out.extend_from_slice(reason.as_str().as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(pingora_core::protocols::http::date::get_cached_date().as_bytes());
    out.extend_from_slice(if keep {
        b"\r\nConnection: keep-alive\r\n\r\n"
    } else {
        b"\r\nConnection: close\r\n\r\n"
    });
    // An answer to HEAD has the fields of the body but not the body.
    if !head_req {
        out.extend_from_slice(body.as_bytes());
    }
}

/// The request as forwarded into `out`: the head as read, Floodgate's fields, the body in
/// hand.
fn request(out: &mut Vec<u8>, c: &Conn, taken: &Taken, snap: &Snapshot) {
    out.clear();
    out.extend_from_slice(&c.rb[..taken.head_len - 2]);
    if let Some(ip) = &c.xff {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    // Tell the app the degradation state, so its own flag code agrees with the sidecar.
    let (routes, eff) = (&snap.routes, &snap.degrade);
    for (name, value) in [
        (&routes.level_header, &eff.level_value),
        (&routes.features_header, &eff.features_value),
    ] {
        if let Some(name) = name {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&c.rb[taken.head_len..taken.head_len + taken.in_hand]);
}

/// The access log's `error` for a failed forward.
fn failure(reason: Reason) -> &'static str {
    match reason {
        Reason::UpstreamUnavailable => "could not connect to the upstream",
        Reason::UpstreamTimeout => "the upstream did not answer within its timeout",
        _ => "the upstream broke off or sent a malformed response",
    }
}

/// True when an idle upstream connection has nothing to say: no close, no stray bytes. One
/// `recv(MSG_PEEK | MSG_DONTWAIT)` on its socket: the kernel's answer, not tokio's readiness,
/// which may not have seen bytes that came since the last read (or may skip the read for the
/// task's budget). A connection that is not a plain TCP stream is not reused.
fn quiet(s: &Stream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let Some(l4) = (**s)
        .as_any()
        .downcast_ref::<pingora_core::protocols::l4::stream::Stream>()
    else {
        return false;
    };
    let mut b = [0u8; 1];
    matches!(
        recv(
            l4.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

async fn write_flush(s: &mut Stream, b: &[u8]) -> std::io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}

/// Writes `b` to the client; false when it is gone.
async fn write_all(s: &mut Stream, b: &[u8]) -> bool {
    write_flush(s, b).await.is_ok()
}

/// Returns when the client goes away while its request waits in the queue. Bytes it sends
/// meanwhile (its next request) are kept, through a small stack buffer so that the read
/// buffer grows only if they come; a client that sends more than a head's worth is not
/// watched further.
async fn watch_client(c: &mut Conn) {
    let mut chunk = [0u8; 64];
    loop {
        if c.rb.len() >= MAX_HEAD {
            std::future::pending::<()>().await;
        }
        match c.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => c.rb.extend_from_slice(&chunk[..n]),
        }
    }
}

#[async_trait]
impl ServerApp for Lean {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.serves(&stream) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        self.serve(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
        ServerApp::cleanup(&*self.proxy).await;
    }
}
