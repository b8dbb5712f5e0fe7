//! The pingora shell: maps pingora's request phases onto Floodgate's snapshot, router and
//! responses. Policy lives elsewhere; this file only wires it to the wire.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use floodgate_config::{Indicator, Level, Priority, UpstreamProtocol};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use std::time::Duration;

use floodgate_config::{FailureMode, PathNormalization, Scope};
use floodgate_policy::key::stable_key_hash;
use floodgate_policy::path::{self, PathError};
use floodgate_policy::{headers, merge, Decision, Outcome, RequestParts, Verdict};
use futures_util::future::join_all;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use smallvec::SmallVec;

use crate::access;
use crate::conn::Guarded;
use crate::forwarded;
use crate::metrics::method_label;
use crate::respond::{self, Reason};
use crate::router::RequestView;
use crate::state::{ActiveGuard, Lane, Runtime, Snapshot};
use floodgate_policy::breaker::{self, Ticket, Transition};
use floodgate_policy::queue::{self, Admit, Permit, Waiting};

/// `Retry-After` of a degraded feature's default answer: degradation lasts minutes, so
/// retrying sooner only adds load.
pub(crate) const DEGRADED_RETRY_AFTER: &str = "30";

/// The proxy application pingora drives: one per listener, each bound to its own port.
pub struct Floodgate {
    rt: Arc<Runtime>,
    /// Which of [`Runtime::lanes`] this application serves.
    index: usize,
    lane: Arc<Lane>,
}

impl Floodgate {
    /// The application of `rt`'s listener number `index` (as in [`Runtime::lanes`]);
    /// `None` when there is no such listener.
    pub fn new(rt: Arc<Runtime>, index: usize) -> Option<Self> {
        let lane = rt.lanes.get(index)?.clone();
        Some(Self { rt, index, lane })
    }

    /// This listener's name, the first value of its series' labels.
    pub(crate) fn listener(&self) -> &str {
        &self.lane.name
    }

    /// Counts a refusal by policy in `floodgate_shed_total`.
    pub(crate) fn count_shed(&self, reason: Reason) {
        let m = &self.rt.metrics;
        m.shed
            .with_label_values(m.by_listener(&[self.listener(), reason.as_str()]))
            .inc();
    }
}

/// The degradation gate's decision for one request.
enum Gate {
    /// On to the limits, the breaker and the queue.
    Pass,
    /// Answer with the route's fallback (`shed`: a priority shed).
    Fallback { shed: bool },
    /// Aggressive caching has a fresh answer.
    Cached(floodgate_policy::cache::Stored, Duration),
}

/// An upstream answer being collected for the response cache.
pub struct Fill {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: bytes::BytesMut,
}

/// Per-request state. Holds the one snapshot this request sees from start to end.
pub struct Ctx {
    pub(crate) snap: Arc<Snapshot>,
    /// This listener's index in the snapshot's `config.listeners` (`None`: a reload removed
    /// it, and the request is refused).
    pub(crate) listener: Option<usize>,
    pub(crate) route: usize,
    pub(crate) start: Instant,
    pub(crate) reason: Option<Reason>,
    /// The rate-limit outcome to report on the response, when a limit applies.
    pub(crate) limit: Option<Verdict>,
    /// The request's slot to the upstream, freed as soon as the upstream's answer is complete.
    pub(crate) permit: Option<Permit>,
    /// The breaker's admission, to report the upstream's outcome on.
    pub(crate) ticket: Option<Ticket>,
    /// The client went away while the request was queued.
    pub(crate) abandoned: bool,
    /// The route's feature breaker's admission.
    pub(crate) feature_ticket: Option<Ticket>,
    /// Remember the upstream's answer in the response cache (cached fallback, aggressive mode).
    pub(crate) remember: bool,
    /// The answer being collected for the cache.
    pub(crate) fill: Option<Fill>,
    pub(crate) _active: ActiveGuard,
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Size of the request head as the client sent it, near enough: request line and headers.
fn header_bytes(req: &RequestHeader) -> usize {
    let uri = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    req.headers
        .iter()
        .fold(uri + 16, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Adds the rate-limit fields the config asks for, describing the deciding limit. Values that
/// do not change per request come prepared with the snapshot ([`headers::lookup`]); the rest
/// are built without `core::fmt`.
fn rate_limit_headers(h: &mut ResponseHeader, snap: &Snapshot, v: &Verdict) -> Result<()> {
    rate_limit_fields(snap, v, &mut |name, value| h.insert_header(name, value))
}

/// The rate-limit fields of [`rate_limit_headers`], each handed to `put` (the fast path
/// writes them into a raw head).
pub(crate) fn rate_limit_fields(
    snap: &Snapshot,
    v: &Verdict,
    put: &mut dyn FnMut(&'static str, http::HeaderValue) -> Result<()>,
) -> Result<()> {
    let name = &snap.limits.limiters()[v.limit].def.name;
    let which = snap.config.rate_limit_headers;
    let o = &v.outcome;
    let f = headers::lookup(
        snap.limit_fields.get(v.limit).map_or(&[], |all| &all[..]),
        name,
        o,
    );
    if which.ietf {
        if let Some(p) = f.policy() {
            put(headers::RATELIMIT_POLICY, p)?;
        }
        if let Some(c) = f.current(o) {
            put(headers::RATELIMIT, c)?;
        }
    }
    if which.legacy {
        put(headers::X_RATELIMIT_LIMIT, f.limit())?;
        put(
            headers::X_RATELIMIT_REMAINING,
            headers::int_value(o.remaining),
        )?;
        put(
            headers::X_RATELIMIT_RESET,
            headers::int_value(headers::ceil_secs(o.reset)),
        )?;
    }
    Ok(())
}

/// The admitted response's rate-limit fields are due (`rate_limit_headers.on_admitted`).
pub(crate) fn fields_on_admitted(snap: &Snapshot, v: &Verdict) -> bool {
    let which = snap.config.rate_limit_headers;
    headers::on_admitted(which.on_admitted, which.near_limit_ratio, &v.outcome)
}

/// The problem detail of a rate-limit rejection, naming the limit.
pub(crate) fn rejection_detail(snap: &Snapshot, v: &Verdict) -> String {
    let limit = &snap.limits.limiters()[v.limit].def;
    format!(
        "over the limit `{}`: {} requests per {} s",
        limit.name,
        v.outcome.limit,
        v.outcome.window.as_secs()
    )
}

/// `Retry-After` of a rate-limit rejection: jittered by 0 or 1 s so clients rejected
/// together do not return together.
pub(crate) fn rejection_retry_after(v: &Verdict, start: Instant) -> u64 {
    let jitter = RandomState::new().hash_one(start) & 1;
    headers::retry_after(&v.outcome, jitter)
}

/// Puts the request's canonical path ([`path::canonical`]) in its URI, before anything
/// reads it: routing, features, limit keys, the cache, the access log and the request
/// forwarded to the app all see the same path. Allocates only for a path that changes.
fn canonicalize(session: &mut Session, mode: PathNormalization) -> Result<(), PathError> {
    if mode == PathNormalization::Off {
        return Ok(());
    }
    let req = session.req_header();
    let raw = req.raw_path();
    // Origin-form: the wire's path, up to `?`. Absolute-form (`GET http://host/p`) goes by
    // the path the URI parsed out of it; `*` (OPTIONS) has no path.
    let path = if raw.first() == Some(&b'/') {
        raw.split(|&b| b == b'?').next().unwrap_or(raw)
    } else if raw == b"*" {
        return Ok(());
    } else {
        req.uri.path().as_bytes()
    };
    if mode == PathNormalization::Strict {
        return path::strict(path).map(|_| ());
    }
    let std::borrow::Cow::Owned(canonical) = path::canonical(path)? else {
        return Ok(());
    };
    if canonical.as_bytes() == path {
        return Ok(());
    }
    let pq = match req.uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| PathError::Control)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| PathError::Control)?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

fn classify(e: &Error) -> Option<Reason> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (
            _,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | SocketError
            | BindError,
        ) => Some(Reason::UpstreamUnavailable),
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => Some(Reason::UpstreamTimeout),
        (ErrorSource::Upstream, _) => Some(Reason::UpstreamError),
        (ErrorSource::Downstream, InvalidHTTPHeader) => Some(Reason::BadRequest),
        _ => None,
    }
}

// === impl Floodgate ===

impl Floodgate {
    /// A request's state, seeing `snap` from start to end.
    pub(crate) fn ctx_for(&self, snap: Arc<Snapshot>) -> Ctx {
        Ctx {
            listener: snap.lanes.get(self.index).copied().flatten(),
            snap,
            route: 0,
            start: Instant::now(),
            reason: None,
            limit: None,
            permit: None,
            ticket: None,
            abandoned: false,
            feature_ticket: None,
            remember: false,
            fill: None,
            _active: ActiveGuard::new(&self.rt),
        }
    }

    /// The runtime this application serves in.
    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// Which of [`Runtime::lanes`] this application serves.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The lane (listener's runtime state) this application serves.
    pub(crate) fn lane(&self) -> &Arc<Lane> {
        &self.lane
    }

    /// Checks every limit of the request's route: global ones in Redis (all at once, one
    /// round trip), the rest, and global ones Redis cannot decide now, locally.
    pub(crate) async fn check_limits(
        &self,
        parts: &RequestParts<'_>,
        ctx: &Ctx,
    ) -> Option<Verdict> {
        let snap = &ctx.snap;
        let defs = &snap.config.limits;
        let record = |i: usize, d: Decision| {
            let slot = match d {
                Decision::Allowed => 0,
                Decision::Limited => 1,
                Decision::ShadowLimited => 2,
            };
            snap.limit_decisions[i][slot].inc();
        };
        // Keys of a shard that is down are answered `Down` by `check` with no round trip.
        let global = self.rt.global.as_ref().filter(|g| g.any_healthy());
        // On the stack: a request has a few limits, and each heap Vec cost ~0.1k instructions.
        let remote: SmallVec<[usize; 4]> = match global {
            Some(_) => snap
                .limits
                .applicable(ctx.route)
                .iter()
                .copied()
                .filter(|&i| defs[i].scope == Scope::Global)
                .collect(),
            None => SmallVec::new(),
        };
        let mut fell_back: SmallVec<[usize; 4]> = SmallVec::new();
        let mut best: Option<Verdict> = None;
        if let Some(g) = global.filter(|_| !remote.is_empty()) {
            let mut settle = |i: usize, o: Outcome| {
                let l = &snap.limits.limiters()[i];
                record(i, floodgate_policy::decision(l, &o));
                let used = o
                    .limit
                    .saturating_sub(o.remaining)
                    .saturating_mul(1_000_000)
                    / o.limit.max(1);
                snap.remote_use[i].fetch_max(used, std::sync::atomic::Ordering::Relaxed);
                if !defs[i].shadow {
                    merge(
                        &mut best,
                        Verdict {
                            limit: i,
                            outcome: o,
                        },
                    );
                }
            };
            // `mode: approximate` keys with a fresh view of the fleet decide here; the rest
            // (and approximate keys without one) go to Redis, all at once.
            let mut exact: SmallVec<[(usize, u64); 4]> = SmallVec::new();
            for &i in &remote {
                let key = stable_key_hash(&defs[i].key, parts);
                if let Some(local) = snap.limits.limiters()[i]
                    .approx
                    .as_ref()
                    .and_then(|a| a.decide(key))
                {
                    if local.wake {
                        g.wake_sync();
                    }
                    settle(i, local.outcome);
                } else {
                    exact.push((i, key));
                }
            }
            // A key decided locally while its shard was down hands those counts to Redis in
            // its first decision back (`take_local` is one atomic load while there are none).
            let call = |&(i, key): &(usize, u64)| {
                g.check(&defs[i], snap.remote_calls[i].as_ref(), key, move || {
                    snap.limits.take_local(i, parts)
                })
            };
            let replicas = snap
                .config
                .redis
                .as_ref()
                .map_or(1, |r| u64::from(r.expected_replicas.get()));
            let mut absorb = |&(i, key): &(usize, u64), answer: Result<_, _>| {
                let approx = snap.limits.limiters()[i].approx.as_ref();
                match answer {
                    Ok(d) => {
                        if let Some(a) = approx {
                            a.view(key, crate::global::view_of(&d), replicas, true);
                        }
                        settle(i, d.outcome);
                    }
                    Err(_) => {
                        if let Some(a) = approx {
                            a.abandon(key);
                        }
                        fell_back.push(i);
                    }
                }
            };
            match exact.as_slice() {
                [] => {}
                // The usual case, one global limit: awaited as it is, without `join_all`'s
                // boxed futures and answers.
                [one] => absorb(one, call(one).await),
                all => {
                    for (e, answer) in all.iter().zip(join_all(all.iter().map(call)).await) {
                        absorb(e, answer);
                    }
                }
            }
        }
        // Without Redis, a fail-closed global limit rejects; the rest decide locally.
        let redis_configured = self.rt.global.is_some();
        let decided_remotely = |i: usize| remote.contains(&i) && !fell_back.contains(&i);
        let closed = |i: usize| {
            let def = &defs[i];
            redis_configured
                && def.scope == Scope::Global
                && !decided_remotely(i)
                && def.failure_mode == FailureMode::Deny
                && !def.shadow
        };
        for &i in snap.limits.applicable(ctx.route) {
            if closed(i) {
                let def = &defs[i];
                record(i, Decision::Limited);
                let outcome = Outcome {
                    allowed: false,
                    limit: def.max_requests.get(),
                    remaining: 0,
                    reset: def.window,
                    retry_after: Duration::from_secs(1),
                    window: def.window,
                };
                merge(&mut best, Verdict { limit: i, outcome });
            }
        }
        let local = snap.limits.check_where(
            ctx.route,
            parts,
            |i| !decided_remotely(i) && !closed(i),
            |i, _, d| record(i, d),
        );
        if let Some(v) = local {
            merge(&mut best, v);
        }
        best
    }
    /// Rate limits. Returns true when the request was refused (and answered).
    async fn limit_gate(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        let parts = RequestParts {
            client_ip: client_ip(session),
            route: ctx.snap.router.name(ctx.route),
            method: &req.method,
            path: req.uri.path(),
            headers: &req.headers,
        };
        let verdict = self.check_limits(&parts, ctx).await;
        match verdict {
            Some(v) if !v.outcome.allowed => {
                ctx.reason = Some(Reason::RateLimited);
                let snap = ctx.snap.clone();
                let detail = rejection_detail(&snap, &v);
                let retry = rejection_retry_after(&v, ctx.start);
                respond::send_with(session, Reason::RateLimited, Some(&detail), |h| {
                    h.insert_header("retry-after", headers::int_value(retry))?;
                    rate_limit_headers(h, &snap, &v)
                })
                .await?;
                self.count_shed(Reason::RateLimited);
                Ok(true)
            }
            v => {
                ctx.limit = v;
                Ok(false)
            }
        }
    }

    /// How long the client's connection waits idle for its next request
    /// (`server.keepalive_timeout_ms`), or not at all while draining: every answer written
    /// then says `Connection: close`. pingora would otherwise wait for ever on an HTTP/1.1
    /// client's next request. HTTP/2 ignores this (pingora sends GOAWAY when draining).
    fn keepalive(&self, session: &mut Session, ctx: &Ctx) {
        if self.rt.is_draining() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            let t = ctx.snap.config.server.keepalive_timeout;
            session.set_keepalive(Some(t.as_secs().max(1) + u64::from(t.subsec_nanos() > 0)));
        }
    }

    pub(crate) fn breaker_moved(&self, ctx: &Ctx, t: Option<Transition>) {
        if let (Some(t), Some(l)) = (t, ctx.listener) {
            let address = ctx.snap.config.listeners[l].upstream.address.as_str();
            self.rt.breaker_moved(self.index, address, t);
        }
    }

    /// Refuses the request by policy: 503 (or its gRPC status) with `Retry-After`.
    async fn shed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reason: Reason,
        retry_after: Duration,
        detail: Option<&str>,
    ) -> Result<()> {
        self.shed_grpc(session, ctx, reason, None, retry_after, detail)
            .await
    }

    /// [`Self::shed`] with the gRPC status given (else the reason's).
    async fn shed_grpc(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reason: Reason,
        grpc_status: Option<u8>,
        retry_after: Duration,
        detail: Option<&str>,
    ) -> Result<()> {
        ctx.reason = Some(reason);
        // A queued request may be answered after SIGTERM came.
        if self.rt.is_draining() {
            session.set_keepalive(None);
        }
        self.count_shed(reason);
        let secs = retry_after.as_secs().max(1) + u64::from(retry_after.subsec_nanos() > 0);
        respond::send_full(session, reason, grpc_status, detail, |h| {
            h.insert_header("retry-after", headers::int_value(secs))
        })
        .await?;
        Ok(())
    }

    /// The admission queue: takes a slot to the upstream, waiting for one when all are busy.
    /// Returns true when the request was refused (and answered).
    async fn admission_gate(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let priority = ctx.snap.routes.priority[ctx.route];
        let waiting = match self.lane.admission.try_acquire(priority) {
            Admit::Now(p) => {
                ctx.permit = Some(p);
                return Ok(false);
            }
            Admit::Wait(w) => w,
            Admit::Full { retry_after } => {
                let fallback = self.queue_timeout(ctx);
                self.shed(
                    session,
                    ctx,
                    Reason::QueueFull,
                    retry_after.unwrap_or(fallback),
                    None,
                )
                .await?;
                return Ok(true);
            }
        };
        self.wait_for_slot(session, ctx, waiting).await
    }

    /// `queue.timeout_ms` in force (a queue removed by a reload while this request waited
    /// lets it through at once, so any value serves).
    pub(crate) fn queue_timeout(&self, ctx: &Ctx) -> Duration {
        ctx.snap
            .config
            .queue
            .as_ref()
            .map_or(Duration::from_secs(1), |q| q.timeout)
    }

    async fn wait_for_slot(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        waiting: Waiting,
    ) -> Result<bool> {
        let mut budget = self.queue_timeout(ctx);
        let deadline = respond::is_grpc(session)
            .then(|| session.req_header().headers.get("grpc-timeout"))
            .flatten()
            .and_then(|v| queue::parse_grpc_timeout(v.as_bytes()));
        if let Some(deadline) = deadline {
            if let Some(expected) = self
                .rt
                .admission
                .expected_wait(&waiting)
                .filter(|&e| e > deadline)
            {
                drop(waiting);
                let detail = format!(
                    "the client's deadline (grpc-timeout {} ms) is shorter than the expected queue wait ({} s)",
                    deadline.as_millis(),
                    expected.as_secs()
                );
                self.shed(session, ctx, Reason::QueueTimeout, expected, Some(&detail))
                    .await?;
                return Ok(true);
            }
            budget = budget.min(deadline);
        }
        let cut_by_deadline = deadline.is_some_and(|d| d <= budget);
        // A request whose body is still unread cannot be watched for a disconnect without
        // reading (buffering) the body; it is noticed when its wait ends instead.
        let watch_client = session.is_body_done();
        let started = Instant::now();
        let outcome = tokio::select! {
            r = tokio::time::timeout(budget, waiting) => r.ok(),
            gone = session.read_body_or_idle(true), if watch_client => {
                // Waiting is dropped with this branch: the place is freed now.
                let e = match gone {
                    Err(e) => e,
                    Ok(_) => Error::explain(ErrorType::ConnectionClosed, "client left while queued"),
                };
                let m = &self.rt.metrics;
                let lane = [self.listener()];
                m.queue_wait.with_label_values(m.by_listener(&lane)).observe(started.elapsed().as_secs_f64());
                m.queue_abandoned.with_label_values(m.by_listener(&lane)).inc();
                ctx.abandoned = true;
                return Err(e);
            }
        };
        let m = &self.rt.metrics;
        m.queue_wait
            .with_label_values(m.by_listener(&[self.listener()]))
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Some(permit) => {
                ctx.permit = Some(permit);
                Ok(false)
            }
            None => {
                let fallback = self.queue_timeout(ctx);
                let retry = self.lane.admission.retry_after().unwrap_or(fallback);
                // The caller's own deadline ended the wait: its call is past saving.
                let (grpc, detail) = if cut_by_deadline {
                    (
                        Some(respond::grpc::DEADLINE_EXCEEDED),
                        Some("the client's deadline (grpc-timeout) passed while queued"),
                    )
                } else {
                    (None, None)
                };
                self.shed_grpc(session, ctx, Reason::QueueTimeout, grpc, retry, detail)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Degradation: a disabled feature, a shed priority or an open feature breaker gets the
    /// fallback; aggressive caching may answer from the cache. Returns true when answered.
    async fn degradation_gate(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.degradation_decision(session, ctx) {
            Gate::Pass => Ok(false),
            Gate::Fallback { shed } => {
                self.fallback(session, ctx, shed).await?;
                Ok(true)
            }
            Gate::Cached(hit, age) => {
                ctx.reason = Some(Reason::Cached);
                respond::send_stored(session, Reason::Cached, &hit, age).await?;
                Ok(true)
            }
        }
    }

    /// The degradation level sheds a route of `priority`: at minimal every route but the
    /// critical ones; at degraded the low-priority ones once the queue is past its warning
    /// depth.
    pub(crate) fn priority_shed(&self, snap: &Snapshot, priority: Priority) -> bool {
        match snap.degrade.level {
            Level::Minimal => priority != Priority::Critical,
            Level::Degraded if priority == Priority::Low => {
                let warning = snap
                    .config
                    .load_indicators
                    .thresholds(Indicator::QueueDepth)
                    .warning;
                warning.is_some_and(|w| f64::from(self.lane.admission.stats().depth) > w)
            }
            _ => false,
        }
    }

    /// What the degradation gate does with this request; borrows the request's snapshot
    /// rather than cloning it, since most requests just pass.
    fn degradation_decision(&self, session: &Session, ctx: &mut Ctx) -> Gate {
        let (r, snap) = (ctx.route, &ctx.snap);
        let (eff, routes) = (&snap.degrade, &snap.routes);
        if eff.route_off[r] {
            return Gate::Fallback { shed: false };
        }
        if self.priority_shed(snap, routes.priority[r]) {
            return Gate::Fallback { shed: true };
        }
        if let Some(b) = &routes.breaker[r] {
            match b.admit().0 {
                breaker::Admit::Pass(t) => ctx.feature_ticket = Some(t),
                breaker::Admit::Reject { .. } => return Gate::Fallback { shed: false },
            }
        }
        if eff.aggressive && routes.aggressive[r] {
            let ttl = snap.config.degradation.aggressive_cache.ttl;
            if let Some((hit, age)) = self.cache_lookup(session, snap, ttl) {
                return Gate::Cached(hit, age);
            }
            ctx.remember = true;
        }
        ctx.remember |= routes.remember[r];
        Gate::Pass
    }

    fn cache_lookup(
        &self,
        session: &Session,
        snap: &Snapshot,
        max_age: Duration,
    ) -> Option<(floodgate_policy::cache::Stored, Duration)> {
        let req = session.req_header();
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let now = self.rt.clock.elapsed();
        let hit = snap
            .routes
            .cache
            .get(&req.method, uri, &req.headers, max_age, now);
        let result = if hit.is_some() { "hit" } else { "miss" };
        self.rt
            .metrics
            .cache_lookups
            .with_label_values(&[result])
            .inc();
        hit.map(|h| {
            let age = now.saturating_sub(h.stored_at);
            (h, age)
        })
    }

    /// Answers with the route's feature fallback: the remembered answer (cached fallbacks),
    /// else the static one, else a 503 problem; gRPC callers get the fallback's
    /// `grpc_status` (UNAVAILABLE unless configured), never a replayed HTTP answer. `shed` marks a
    /// priority shed, also counted in `floodgate_shed_total`.
    async fn fallback(&self, session: &mut Session, ctx: &mut Ctx, shed: bool) -> Result<()> {
        let snap = ctx.snap.clone();
        let r = ctx.route;
        ctx.reason = Some(Reason::Degraded);
        let m = &self.rt.metrics;
        let feature = snap.routes.feature[r].as_deref().unwrap_or("none");
        m.degraded_responses.with_label_values(&[feature]).inc();
        if shed {
            self.count_shed(Reason::Degraded);
        }
        let fallback = snap.routes.fallback[r].as_ref();
        if respond::is_grpc(session) {
            let grpc = fallback.map(|f| &f.grpc);
            let status = grpc.map_or(respond::grpc::UNAVAILABLE, |g| g.status);
            let message = grpc.and_then(|g| g.message.as_deref()).unwrap_or(
                "degraded: this feature is switched off while the service runs at reduced capacity",
            );
            respond::send_grpc(session, Reason::Degraded, status, message, |h| {
                h.insert_header("retry-after", DEGRADED_RETRY_AFTER)
            })
            .await?;
            return Ok(());
        }
        if let Some(ttl) = fallback.and_then(|f| f.cached) {
            if let Some((hit, age)) = self.cache_lookup(session, &snap, ttl) {
                respond::send_stored(session, Reason::Degraded, &hit, age).await?;
                return Ok(());
            }
        }
        if let Some(a) = fallback.and_then(|f| f.answer.as_ref()) {
            respond::send_static(session, Reason::Degraded, a).await?;
            return Ok(());
        }
        respond::send_with(session, Reason::Degraded, None, |h| {
            h.insert_header("retry-after", DEGRADED_RETRY_AFTER)
        })
        .await?;
        Ok(())
    }

    /// Tells the breakers (the upstream's and the route's feature's) how the upstream did,
    /// once the request is over.
    fn report_outcome(&self, ctx: &mut Ctx, status: u16) {
        let failed = match ctx.reason {
            Some(Reason::UpstreamUnavailable | Reason::UpstreamTimeout | Reason::UpstreamError) => {
                Some(true)
            }
            // Refused before reaching the upstream: no outcome (tickets give their place back).
            Some(_) => None,
            None if ctx.abandoned || status == 0 => None,
            None => Some(status >= 500),
        };
        let (main, feature) = (ctx.ticket.take(), ctx.feature_ticket.take());
        let Some(failed) = failed else { return };
        let report = |t: Ticket| if failed { t.failure() } else { t.success() };
        if let Some(t) = main {
            let moved = report(t);
            self.breaker_moved(ctx, moved);
        }
        if let Some(t) = feature {
            if let Some(moved) = report(t) {
                let feature = ctx.snap.routes.feature[ctx.route]
                    .as_deref()
                    .unwrap_or("none");
                tracing::warn!(
                    feature,
                    from = moved.from.as_str(),
                    to = moved.to.as_str(),
                    "feature circuit breaker changed state; while open the feature gets its fallback"
                );
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Floodgate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        self.ctx_for(self.rt.current.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // The head is in: its deadline is met.
        if let Some(g) = Guarded::of(session.as_downstream().stream()) {
            g.head_done();
        }
        self.keepalive(session, ctx);
        if ctx.listener.is_none() {
            // Its port stays bound until a restart; the app behind it is no longer ours to reach.
            ctx.reason = Some(Reason::UpstreamUnavailable);
            let detail = format!(
                "the listener `{}` was removed from the config; its port closes at the next restart",
                self.listener()
            );
            respond::send_with(session, Reason::UpstreamUnavailable, Some(&detail), |_| {
                Ok(())
            })
            .await?;
            return Ok(true);
        }
        if let Err(e) = canonicalize(session, ctx.snap.config.server.path_normalization) {
            ctx.reason = Some(Reason::BadRequest);
            respond::send_with(session, Reason::BadRequest, Some(e.detail()), |_| Ok(())).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let view = RequestView {
            method: &req.method,
            path: req.uri.path(),
            host: req.uri.host().or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            }),
            headers: &req.headers,
            listener: &self.lane.name,
        };
        ctx.route = ctx.snap.router.route(&view).0;
        if header_bytes(req) > ctx.snap.config.server.max_request_header_bytes {
            ctx.reason = Some(Reason::HeadersTooLarge);
            respond::send(session, Reason::HeadersTooLarge).await?;
            return Ok(true);
        }
        if self.degradation_gate(session, ctx).await? {
            return Ok(true);
        }
        if !ctx.snap.limits.is_empty_for(ctx.route) && self.limit_gate(session, ctx).await? {
            return Ok(true);
        }
        if ctx.snap.config.circuit_breaker.is_some() {
            let (admit, t) = self.lane.breaker.admit();
            self.breaker_moved(ctx, t);
            match admit {
                breaker::Admit::Pass(ticket) => ctx.ticket = Some(ticket),
                breaker::Admit::Reject { retry_after } => {
                    self.shed(session, ctx, Reason::CircuitOpen, retry_after, None)
                        .await?;
                    return Ok(true);
                }
            }
        }
        self.admission_gate(session, ctx).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // SIGTERM may have come while the upstream worked on this request.
        if self.rt.is_draining() {
            session.set_keepalive(None);
        }
        // Rejections are answered before this and always carry the fields.
        if let Some(v) = ctx
            .limit
            .as_ref()
            .filter(|v| fields_on_admitted(&ctx.snap, v))
        {
            rate_limit_headers(upstream_response, &ctx.snap, v)?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(l) = ctx.listener else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "the listener was removed from the config",
            ));
        };
        let up = &ctx.snap.config.listeners[l].upstream;
        let mut peer = HttpPeer::new(ctx.snap.upstreams[l], false, String::new());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.idle_timeout = Some(up.idle_timeout);
        let h2 = match up.protocol {
            // An h2c client (gRPC) is forwarded as h2c: gRPC does not survive HTTP/1.1.
            UpstreamProtocol::Auto => session.is_http2(),
            UpstreamProtocol::H2c => true,
            UpstreamProtocol::Http1 => false,
        };
        if h2 {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = client_ip(session) {
            if let Some(v) =
                forwarded::append_for(upstream.headers.get(&forwarded::X_FORWARDED_FOR), ip)
            {
                upstream.insert_header(forwarded::X_FORWARDED_FOR, v)?;
            }
        }
        upstream.insert_header(forwarded::X_FORWARDED_PROTO, forwarded::PROTO_HTTP)?;
        // Tell the app the degradation state, so its own flag code agrees with the sidecar.
        let (routes, eff) = (&ctx.snap.routes, &ctx.snap.degrade);
        if let Some(name) = &routes.level_header {
            upstream.insert_header(name.clone(), eff.level_value.clone())?;
        }
        if let Some(name) = &routes.features_header {
            upstream.insert_header(name.clone(), eff.features_value.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.remember {
            let cache = &ctx.snap.routes.cache;
            if cache.storable(upstream_response.status, &upstream_response.headers) {
                ctx.fill = Some(Fill {
                    status: upstream_response.status,
                    headers: upstream_response.headers.clone(),
                    body: bytes::BytesMut::new(),
                });
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(fill) = &mut ctx.fill {
            if let Some(b) = body {
                fill.body.extend_from_slice(b);
            }
            if fill.body.len() as u64 > ctx.snap.routes.cache.max_entry_bytes() {
                ctx.fill = None;
            }
        }
        if end_of_stream {
            if let Some(fill) = ctx.fill.take() {
                let req = session.req_header();
                let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
                ctx.snap.routes.cache.store(
                    &req.method,
                    uri,
                    &req.headers,
                    fill.status,
                    &fill.headers,
                    fill.body.freeze(),
                    self.rt.clock.elapsed(),
                );
            }
            // The upstream is done with this request: its slot goes to the next in line now,
            // not after the client has read the rest of the response.
            ctx.permit = None;
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        // A client that gives up while queued is routine under load: counted, not an error.
        ctx.abandoned
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.abandoned {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let reason = classify(e);
        let mut code = 0;
        let headers_sent = session.response_written().is_some();
        // pingora-proxy 0.9.1 closes the client's connection after any failure to proxy (its
        // `process_request` finishes the session with the upstream's reuse flag, false here,
        // and ignores `can_reuse_downstream`), so the answer must say `Connection: close`:
        // a keep-alive client promised reuse would send its next request into a closed
        // socket and lose it.
        session.set_keepalive(None);
        match reason {
            Some(r) if !headers_sent => {
                ctx.reason = Some(r);
                code = respond::send(session, r).await.unwrap_or(0);
            }
            Some(r) => {
                ctx.reason = Some(r);
                // The response already started: a gRPC call still ends with a status in its
                // trailers (a reset stream reads as CANCELLED); anything else can only be cut,
                // which tells the client.
                if respond::is_grpc(session) {
                    respond::end_grpc_with_trailers(session, r);
                }
            }
            None => {
                if let ErrorType::HTTPStatus(c) = e.etype() {
                    code = *c;
                    let _ = session.respond_error(code).await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.permit = None;
        // The exchange is over; with its body read, the next bytes are the next head. With it
        // unread (answered before the body came), the connection is not reused: pingora
        // already said `Connection: close` then, and draining a body for a refused request
        // would hand a slow client a connection with no head deadline.
        if session.is_body_done() {
            if let Some(g) = Guarded::of(session.as_downstream().stream()) {
                g.response_done();
            }
        } else {
            session.set_keepalive(None);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        self.finish(
            ctx,
            &Finished {
                client: client_ip(session),
                method: &req.method,
                path: req.uri.path(),
                status,
                error: e.map(|e| e as &dyn std::fmt::Display),
            },
        );
    }
}

/// How an exchange ended, for [`Floodgate::finish`].
pub(crate) struct Finished<'a> {
    pub client: Option<std::net::IpAddr>,
    pub method: &'a http::Method,
    pub path: &'a str,
    /// The status written to the client (0: none).
    pub status: u16,
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl Floodgate {
    /// The end of an exchange, on either path: the breakers told the upstream's outcome, the
    /// load window, the request counters and histogram, and the access log.
    pub(crate) fn finish(&self, ctx: &mut Ctx, x: &Finished<'_>) {
        let status = x.status;
        self.report_outcome(ctx, status);
        let method = method_label(x.method);
        let route = ctx
            .snap
            .router
            .all()
            .nth(ctx.route)
            .map_or("default", |r| r.name.as_str());
        let elapsed = ctx.start.elapsed();
        let rt = &self.rt;
        let m = &rt.metrics;
        // Only the app's outcomes feed error rate and latency: the sidecar's own answers
        // are instant and would let shedding raise the error rate that triggers shedding.
        // Before the request counter: one who sees a request counted sees it in the load.
        match ctx.reason {
            Some(Reason::UpstreamUnavailable | Reason::UpstreamTimeout | Reason::UpstreamError) => {
                ctx.snap.load.record_app(elapsed, true);
            }
            Some(_) => ctx.snap.load.record_own(),
            None if !ctx.abandoned => ctx.snap.load.record_app(elapsed, status >= 500),
            None => {}
        }
        m.requests
            .with_label_values(m.by_listener(&[
                self.listener(),
                route,
                method,
                rt.status_labels.get(status),
            ]))
            .inc();
        if let Some(h) = ctx
            .snap
            .route_duration
            .get(self.index)
            .and_then(|r| r.get(ctx.route))
        {
            h.observe(elapsed.as_secs_f64());
        }
        if let Some(r) = ctx.reason {
            m.local_responses
                .with_label_values(m.by_listener(&[self.listener(), r.as_str()]))
                .inc();
        }
        if ctx.snap.config.logging.access_log {
            access::log(&access::Entry {
                client: x.client,
                listener: rt.boot.named_listeners.then_some(self.listener()),
                method: x.method.as_str(),
                path: x.path,
                route,
                status,
                duration: elapsed,
                reason: match ctx.reason {
                    Some(r) => r.as_str(),
                    None if ctx.abandoned => "client_gone",
                    None => "",
                },
                error: x.error,
            });
        }
    }
}
