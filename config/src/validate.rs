//! Turns YAML text into a checked [`Config`], collecting *every* problem rather than stopping at
//! the first: each top-level section and each list item is decoded on its own, then the
//! semantic rules (ranges, unique names, references) run over whatever decoded.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::error::{ConfigErrors, FieldError};
use crate::locate::LineIndex;
use crate::model::*;
use crate::raw::*;

const MAX_LIMIT: u64 = MAX_REQUESTS;

/// Name given to requests that match no route.
pub const DEFAULT_ROUTE: &str = "default";

/// The config file's top-level keys.
pub const TOP_LEVEL: &[&str] = &[
    "listen",
    "upstream",
    "listeners",
    "metrics",
    "admin",
    "redis",
    "routes",
    "limits",
    "rate_limit_headers",
    "queue",
    "circuit_breaker",
    "load_indicators",
    "degradation",
    "schedules",
    "logging",
    "server",
];

struct Ctx {
    index: LineIndex,
    errors: Vec<FieldError>,
}

impl Ctx {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.index.line_of(&path);
        self.errors.push(FieldError {
            path,
            line,
            message: message.into(),
        });
    }

    /// Decodes one piece of the document, recording a located error for every field of it
    /// that does not fit (not only the first: see [`crate::decode`]).
    fn decode<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match crate::decode::decode_all::<T>(value) {
            Ok(v) => Some(v),
            Err(errors) => {
                for e in errors {
                    // The error path already ends at the offending key, unknown keys included.
                    let full = join(path, if e.path == "." { "" } else { &e.path });
                    let message = friendly(&full, &e.message);
                    self.err(full, message);
                }
                None
            }
        }
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

/// serde's messages, made to read as advice.
fn friendly(path: &str, msg: &str) -> String {
    if let Some(said) = crate::words::type_error(path, msg) {
        return said;
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or("");
        let expected = rest.split_once(", expected ").map(|x| x.1).unwrap_or("");
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("unknown key `{field}`; valid keys here: {expected} (check the spelling; see config/reference.yaml)");
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        return format!("missing required key `{field}`");
    }
    msg.to_string()
}

/// Parses and validates `source`; `origin` names the file in error messages.
pub fn parse(source: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        origin: origin.to_path_buf(),
        errors,
    };
    let doc: Value = match serde_yaml::from_str(source) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            return Err(fail(vec![FieldError {
                path: String::new(),
                line,
                message: format!("not valid YAML: {e}"),
            }]));
        }
    };
    let mut cx = Ctx {
        index: LineIndex::new(source),
        errors: Vec::new(),
    };
    let config = match doc {
        Value::Mapping(map) => check(&mut cx, map),
        Value::Null => {
            cx.err(
                "",
                "the file is empty; start from config/examples/quickstart.yaml",
            );
            None
        }
        _ => {
            cx.err(
                "",
                "the top level must be a mapping of keys (listen, upstream, ...)",
            );
            None
        }
    };
    cx.errors.sort_by_key(|e| e.line.unwrap_or(0));
    match config {
        Some(c) if cx.errors.is_empty() => Ok(c),
        _ => Err(fail(cx.errors)),
    }
}

fn take(map: &mut Mapping, key: &str) -> Option<Value> {
    map.remove(key).filter(|v| !v.is_null())
}

/// Decodes a list section item by item so one bad item does not hide the others.
fn decode_list<T: DeserializeOwned>(
    cx: &mut Ctx,
    key: &str,
    value: Option<Value>,
) -> Vec<Option<T>> {
    match value {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| cx.decode(&format!("{key}[{i}]"), v))
            .collect(),
        Some(_) => {
            cx.err(key, "must be a list (`- name: ...` items)");
            Vec::new()
        }
    }
}

fn check(cx: &mut Ctx, mut map: Mapping) -> Option<Config> {
    for k in map.keys() {
        match k.as_str() {
            Some(name) if TOP_LEVEL.contains(&name) => {}
            Some(name) => cx.err(
                name,
                format!(
                    "unknown key `{name}`; valid top-level keys: {} (see config/reference.yaml)",
                    TOP_LEVEL.join(", ")
                ),
            ),
            None => cx.err("", format!("top-level keys must be strings, found {k:?}")),
        }
    }

    let (raw_listen, raw_upstream) = (take(&mut map, "listen"), take(&mut map, "upstream"));
    let raw_listeners = take(&mut map, "listeners");
    let named_listeners = raw_listeners.is_some();
    if named_listeners {
        if let Some(key) = [("listen", &raw_listen), ("upstream", &raw_upstream)]
            .into_iter()
            .find_map(|(k, v)| v.is_some().then_some(k))
        {
            cx.err(
                key,
                "give either `listeners` (one or more named ports) or the top-level `listen` and \
                 `upstream` (one listener, named `default`), not both; move `listen` and \
                 `upstream` into an item of `listeners`",
            );
        }
    }
    let listen: Option<String> = match raw_listen {
        Some(v) => cx.decode("listen", v),
        None if named_listeners => None,
        None => {
            cx.err(
                "listen",
                "missing required key `listen` (e.g. `listen: 0.0.0.0:8080`), or `listeners:` for several ports",
            );
            None
        }
    };
    let upstream: Option<RawUpstream> = match raw_upstream {
        Some(v) => cx.decode("upstream", v),
        None if named_listeners => None,
        None => {
            cx.err(
                "upstream",
                "missing required key `upstream` (e.g. `upstream: { address: 127.0.0.1:3000 }`)",
            );
            None
        }
    };
    let before_listeners = cx.errors.len();
    let listeners: Vec<Option<RawListener>> = decode_list(cx, "listeners", raw_listeners);
    if named_listeners && listeners.is_empty() && cx.errors.len() == before_listeners {
        cx.err(
            "listeners",
            "lists no listeners; give at least one `{ name, listen, upstream }`",
        );
    }
    // A route's listener can be checked once every listener decoded (as for limits' routes).
    let listeners_decoded = cx.errors.len() == before_listeners;
    let metrics: Option<RawMetrics> =
        take(&mut map, "metrics").and_then(|v| cx.decode("metrics", v));
    let admin: Option<RawAdmin> = take(&mut map, "admin").and_then(|v| cx.decode("admin", v));
    let redis: Option<RawRedis> = take(&mut map, "redis").and_then(|v| cx.decode("redis", v));
    let before_routes = cx.errors.len();
    let routes: Vec<Option<RawRoute>> = decode_list(cx, "routes", take(&mut map, "routes"));
    // A limit's routes can be checked once every route decoded: an unknown name is then a
    // real mistake, not a route that failed to decode (reported already).
    let routes_decoded = cx.errors.len() == before_routes;
    let limits: Vec<Option<RawLimit>> = decode_list(cx, "limits", take(&mut map, "limits"));
    let rl_headers: Option<RawRateLimitHeaders> =
        take(&mut map, "rate_limit_headers").and_then(|v| cx.decode("rate_limit_headers", v));
    let queue: Option<RawQueue> = take(&mut map, "queue").and_then(|v| cx.decode("queue", v));
    let breaker: Option<RawCircuitBreaker> =
        take(&mut map, "circuit_breaker").and_then(|v| cx.decode("circuit_breaker", v));
    let indicators: Option<RawLoadIndicators> =
        take(&mut map, "load_indicators").and_then(|v| cx.decode("load_indicators", v));
    let degradation: Option<RawDegradation> =
        take(&mut map, "degradation").and_then(|v| cx.decode("degradation", v));
    let schedules: Vec<Option<RawSchedule>> =
        decode_list(cx, "schedules", take(&mut map, "schedules"));
    let logging: Option<RawLogging> =
        take(&mut map, "logging").and_then(|v| cx.decode("logging", v));
    let server: Option<RawServer> = take(&mut map, "server").and_then(|v| cx.decode("server", v));

    // === addresses ===
    // The names a route may match on, whether or not each listener's addresses are good.
    let mut listener_names: Vec<String> = if named_listeners {
        listeners
            .iter()
            .flatten()
            .filter(|l| valid_listener_name(&l.name))
            .map(|l| l.name.clone())
            .collect()
    } else {
        vec![DEFAULT_LISTENER.to_string()]
    };
    listener_names.sort_unstable();
    listener_names.dedup();
    let checked_listeners = if named_listeners {
        check_listeners(cx, listeners)
    } else {
        let listen = listen.and_then(|l| socket_addr(cx, "listen", &l));
        let upstream = upstream.and_then(|u| check_upstream(cx, "upstream", u));
        match (listen, upstream) {
            (Some(listen), Some(upstream)) => Some(vec![Listener {
                name: DEFAULT_LISTENER.to_string(),
                listen,
                upstream,
            }]),
            _ => None,
        }
    };
    let metrics_listen = metrics.and_then(|m| socket_addr(cx, "metrics.listen", &m.listen));
    let admin = admin.and_then(|a| {
        let listen = socket_addr(cx, "admin.listen", &a.listen)?;
        let mut tokens = Vec::new();
        for (i, t) in a.tokens.into_iter().enumerate() {
            if t.file.trim().is_empty() {
                cx.err(
                    format!("admin.tokens[{i}].file"),
                    "must name a file holding the token",
                );
            }
            tokens.push((t.file, t.role));
        }
        let admin = Admin {
            listen,
            tokens,
            audit_log: a.audit_log.filter(|f| !f.trim().is_empty()),
            tls: a.tls.map(|t| AdminTls {
                cert_file: t.cert_file,
                key_file: t.key_file,
                client_ca_file: t.client_ca_file,
            }),
            allow_insecure: a.allow_insecure,
        };
        if let Some(problem) = admin_in_clear(&admin, &format!("`{listen}`")) {
            cx.err("admin.listen", problem);
        }
        Some(admin)
    });
    let mut ports: Vec<(String, Option<SocketAddr>)> = match &checked_listeners {
        Some(ls) if named_listeners => ls
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].listen"), Some(l.listen)))
            .collect(),
        Some(ls) => ls
            .iter()
            .map(|l| ("listen".to_string(), Some(l.listen)))
            .collect(),
        None => Vec::new(),
    };
    ports.push(("metrics.listen".into(), metrics_listen));
    ports.push(("admin.listen".into(), admin.as_ref().map(|a| a.listen)));
    for (path, addr, other) in listener_clashes(&ports) {
        cx.err(
            path,
            format!("{addr} is already used by `{other}`; each listener needs its own port"),
        );
    }

    let redis = redis.and_then(|r| check_redis(cx, r));

    // === routes ===
    let mut route_names: HashSet<String> = HashSet::new();
    let mut route_features: BTreeSet<String> = BTreeSet::new();
    let mut checked_routes = Vec::new();
    for (i, r) in routes.into_iter().enumerate() {
        let Some(r) = r else { continue };
        let p = format!("routes[{i}]");
        if let Some(route) = check_route(cx, &p, r) {
            if let Some(problem) = route
                .listener
                .as_deref()
                .filter(|_| listeners_decoded)
                .and_then(|l| unknown_listener(l, &listener_names))
            {
                cx.err(format!("{p}.match.listener"), problem);
            }
            if route.name == DEFAULT_ROUTE {
                cx.err(
                    format!("{p}.name"),
                    "`default` is reserved for requests that match no route; pick another name",
                );
            } else if !route_names.insert(route.name.clone()) {
                cx.err(
                    format!("{p}.name"),
                    format!(
                        "duplicate route name `{}`; route names must be unique",
                        route.name
                    ),
                );
            }
            if let Some(f) = &route.feature {
                route_features.insert(f.clone());
            }
            checked_routes.push(route);
        }
    }

    // === limits ===
    let mut limit_names = HashSet::new();
    let mut checked_limits = Vec::new();
    for (i, l) in limits.into_iter().enumerate() {
        let Some(l) = l else { continue };
        let p = format!("limits[{i}]");
        if !limit_names.insert(l.name.clone()) {
            cx.err(
                format!("{p}.name"),
                format!(
                    "duplicate limit name `{}`; limit names must be unique",
                    l.name
                ),
            );
        }
        if let Some(limit) = check_limit(cx, &p, l, &route_names, routes_decoded) {
            checked_limits.push(limit);
        }
    }

    let queue = queue.and_then(|q| check_queue(cx, q));
    let circuit_breaker = breaker.and_then(|b| check_breaker(cx, "circuit_breaker", b));
    let load_indicators = check_indicators(cx, indicators.unwrap_or_default());
    let degradation = check_degradation(
        cx,
        degradation.unwrap_or_default(),
        &route_features,
        &route_names,
    );
    let schedules = check_schedules(cx, schedules, queue.is_some());
    let logging = logging.unwrap_or_default();
    let server = check_server(cx, server.unwrap_or_default());

    Some(Config {
        listeners: checked_listeners?,
        named_listeners,
        metrics_listen,
        admin,
        redis,
        routes: checked_routes,
        limits: checked_limits,
        rate_limit_headers: check_rate_limit_headers(cx, rl_headers.unwrap_or_default()),
        queue,
        circuit_breaker,
        load_indicators,
        degradation,
        schedules,
        logging: Logging {
            format: logging.format,
            access_log: logging.access_log.unwrap_or(true),
        },
        server,
    })
}

fn socket_addr(cx: &mut Ctx, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            cx.err(
                path,
                format!(
                    "`{s}` has port 0; give a fixed port, e.g. `{}:8080`",
                    a.ip()
                ),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(
                path,
                format!(
                    "`{s}` is not an `ip:port` address (e.g. `127.0.0.1:8080` or `[::1]:8080`)"
                ),
            );
            None
        }
    }
}

fn ms(cx: &mut Ctx, path: &str, v: Option<u64>, default: u64, max: u64) -> Duration {
    let v = v.unwrap_or(default);
    if v == 0 || v > max {
        cx.err(
            path,
            format!("must be between 1 and {max} milliseconds, got {v}"),
        );
    }
    Duration::from_millis(v)
}

/// Why `admin` would put bearer tokens on the network in clear text, if it would: a
/// non-loopback `listen` without `tls`, not allowed by `allow_insecure`. `shown` is how the
/// address was given (the file's value, or the command-line flag).
pub(crate) fn admin_in_clear(admin: &Admin, shown: &str) -> Option<String> {
    // `::ffff:127.0.0.1` is loopback too.
    if admin.tls.is_some() || admin.allow_insecure || admin.listen.ip().to_canonical().is_loopback()
    {
        return None;
    }
    Some(format!(
        "{shown} is not a loopback address and `admin.tls` is not set, so bearer tokens would \
         cross the network in clear text; set `admin.tls`, bind `127.0.0.1:{port}`, or set \
         `admin.allow_insecure: true` if that network is trusted on purpose",
        port = admin.listen.port()
    ))
}

/// Listeners that reuse an earlier one's address: `(path, address, the earlier path)`.
pub(crate) fn listener_clashes(
    listeners: &[(String, Option<SocketAddr>)],
) -> Vec<(&str, SocketAddr, &str)> {
    let mut clashes = Vec::new();
    for (i, (path, addr)) in listeners.iter().enumerate() {
        let Some(addr) = addr else { continue };
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| *a == Some(*addr)) {
            clashes.push((path.as_str(), *addr, other.as_str()));
        }
    }
    clashes
}

/// A listener name as metrics labels and flags (`--listener NAME=...`) can carry it.
pub(crate) fn valid_listener_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What is wrong with a route's `listener: name`, unless it is one of `known`.
pub(crate) fn unknown_listener(name: &str, known: &[String]) -> Option<String> {
    if known.iter().any(|k| k == name) {
        return None;
    }
    Some(
        match crate::words::closest(name, known.iter().map(String::as_str)) {
            Some(meant) => format!("unknown listener `{name}`; did you mean `{meant}`?"),
            None => format!(
                "unknown listener `{name}`; defined listeners: {}",
                known.join(", ")
            ),
        },
    )
}

/// The items of `listeners:`: names unique and usable as labels, addresses checked.
fn check_listeners(cx: &mut Ctx, raw: Vec<Option<RawListener>>) -> Option<Vec<Listener>> {
    let mut names: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    let mut complete = true;
    for (i, l) in raw.into_iter().enumerate() {
        let p = format!("listeners[{i}]");
        let Some(l) = l else {
            complete = false;
            continue;
        };
        if !valid_listener_name(&l.name) {
            cx.err(
                format!("{p}.name"),
                format!(
                    "`{}` is not a listener name: use letters, digits, `-` and `_` (e.g. `http`, `grpc`)",
                    l.name
                ),
            );
        } else if !names.insert(l.name.clone()) {
            cx.err(
                format!("{p}.name"),
                format!(
                    "duplicate listener name `{}`; listener names must be unique",
                    l.name
                ),
            );
        }
        let listen = socket_addr(cx, &format!("{p}.listen"), &l.listen);
        let upstream = check_upstream(cx, &format!("{p}.upstream"), l.upstream);
        match (listen, upstream) {
            (Some(listen), Some(upstream)) => out.push(Listener {
                name: l.name,
                listen,
                upstream,
            }),
            _ => complete = false,
        }
    }
    (complete && !out.is_empty()).then_some(out)
}

/// `host:port` with a non-zero port, as `upstream.address` must be.
pub(crate) fn is_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

fn check_upstream(cx: &mut Ctx, p: &str, u: RawUpstream) -> Option<Upstream> {
    let ok = is_host_port(&u.address);
    if !ok {
        cx.err(
            format!("{p}.address"),
            format!(
                "`{}` is not `host:port` with a non-zero port (e.g. `127.0.0.1:3000`)",
                u.address
            ),
        );
    }
    let up = Upstream {
        connect_timeout: ms(
            cx,
            &format!("{p}.connect_timeout_ms"),
            u.connect_timeout_ms,
            1000,
            60_000,
        ),
        read_timeout: ms(
            cx,
            &format!("{p}.read_timeout_ms"),
            u.read_timeout_ms,
            30_000,
            3_600_000,
        ),
        write_timeout: ms(
            cx,
            &format!("{p}.write_timeout_ms"),
            u.write_timeout_ms,
            30_000,
            3_600_000,
        ),
        idle_timeout: ms(
            cx,
            &format!("{p}.idle_timeout_ms"),
            u.idle_timeout_ms,
            60_000,
            3_600_000,
        ),
        address: u.address,
        protocol: u.protocol,
    };
    ok.then_some(up)
}

fn check_redis(cx: &mut Ctx, r: RawRedis) -> Option<Redis> {
    let url_ok = |cx: &mut Ctx, path: String, u: &str| {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            cx.err(path, format!("`{u}` must start with redis:// or rediss://"));
        }
    };
    let target = match (r.url, r.cluster) {
        (Some(u), None) => {
            url_ok(cx, "redis.url".into(), &u);
            RedisTarget::Standalone(u)
        }
        (None, Some(nodes)) if !nodes.is_empty() => {
            for (i, n) in nodes.iter().enumerate() {
                url_ok(cx, format!("redis.cluster[{i}]"), n);
            }
            RedisTarget::Cluster(nodes)
        }
        (None, Some(_)) => {
            cx.err(
                "redis.cluster",
                "lists no nodes; name at least one seed node",
            );
            return None;
        }
        (Some(_), Some(_)) => {
            cx.err(
                "redis",
                "give either `url` (one server) or `cluster` (seed nodes), not both",
            );
            return None;
        }
        (None, None) => {
            cx.err("redis", "needs `url: redis://host:6379` or `cluster: [...]`; remove `redis` to keep every limit local");
            return None;
        }
    };
    let timeout = ms(cx, "redis.timeout_ms", r.timeout_ms, 20, 10_000);
    let replicas = r.expected_replicas.unwrap_or(1);
    let Some(expected_replicas) = NonZeroU32::new(replicas) else {
        cx.err("redis.expected_replicas", "must be at least 1");
        return None;
    };
    Some(Redis {
        target,
        timeout,
        expected_replicas,
    })
}

fn valid_method(m: &str) -> bool {
    !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase())
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_route(cx: &mut Ctx, p: &str, r: RawRoute) -> Option<Route> {
    if r.name.trim().is_empty() {
        cx.err(format!("{p}.name"), "must not be empty");
    }
    let m = r.matcher;
    let given = [
        m.path_prefix.is_some(),
        m.path_exact.is_some(),
        m.path_regex.is_some(),
    ];
    let path = if given.iter().filter(|g| **g).count() > 1 {
        cx.err(
            format!("{p}.match"),
            "give at most one of path_prefix, path_exact, path_regex",
        );
        PathMatch::Any
    } else if let Some(prefix) = m.path_prefix {
        if !prefix.starts_with('/') {
            cx.err(
                format!("{p}.match.path_prefix"),
                format!("`{prefix}` must start with `/`"),
            );
        }
        PathMatch::Prefix(prefix)
    } else if let Some(exact) = m.path_exact {
        if !exact.starts_with('/') {
            cx.err(
                format!("{p}.match.path_exact"),
                format!("`{exact}` must start with `/`"),
            );
        }
        PathMatch::Exact(exact)
    } else if let Some(re) = m.path_regex {
        match regex::Regex::new(&re) {
            Ok(r) => PathMatch::Regex(r),
            Err(e) => {
                // regex's message spans lines (pattern, caret, reason); the reason is the last.
                let shown = e.to_string();
                let reason = shown
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                cx.err(
                    format!("{p}.match.path_regex"),
                    format!("`{re}` is not a valid regular expression: {reason}"),
                );
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };
    if let Some(methods) = &m.methods {
        for (i, meth) in methods.iter().enumerate() {
            if !valid_method(meth) {
                cx.err(
                    format!("{p}.match.methods[{i}]"),
                    format!("`{meth}` is not an upper-case HTTP method (e.g. GET, POST)"),
                );
            }
        }
    }
    let mut headers = Vec::new();
    for (name, value) in m.headers.unwrap_or_default() {
        if !valid_header_name(&name) {
            cx.err(
                format!("{p}.match.headers.{name}"),
                format!("`{name}` is not a valid header name"),
            );
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    Some(Route {
        name: r.name,
        path,
        methods: m.methods,
        host: m.host.map(|h| h.to_ascii_lowercase()),
        headers,
        listener: m.listener,
        feature: r.feature,
        priority: r.priority,
    })
}

fn check_limit(
    cx: &mut Ctx,
    p: &str,
    l: RawLimit,
    routes: &HashSet<String>,
    check_refs: bool,
) -> Option<Limit> {
    if l.name.trim().is_empty() {
        cx.err(format!("{p}.name"), "must not be empty");
    }
    if let (Some(list), true) = (&l.routes, check_refs) {
        for (i, r) in list.iter().enumerate() {
            if r != DEFAULT_ROUTE && !routes.contains(r) {
                let mut known: Vec<&str> = routes.iter().map(String::as_str).collect();
                known.sort_unstable();
                known.push(DEFAULT_ROUTE);
                cx.err(
                    format!("{p}.routes[{i}]"),
                    format!("unknown route `{r}`; defined routes: {}", known.join(", ")),
                );
            }
        }
    }
    let mut key = Vec::new();
    for (i, k) in l.key.iter().enumerate() {
        let part = match k.as_str() {
            "client_ip" => Some(KeyPart::ClientIp),
            "route" => Some(KeyPart::Route),
            "method" => Some(KeyPart::Method),
            "path" => Some(KeyPart::Path),
            other => match other.strip_prefix("header:") {
                Some(h) if valid_header_name(h) => Some(KeyPart::Header(h.to_ascii_lowercase())),
                _ => None,
            },
        };
        match part {
            Some(part) if key.contains(&part) => {
                cx.err(format!("{p}.key[{i}]"), format!("`{k}` is listed twice"))
            }
            Some(part) => key.push(part),
            None => cx.err(
                format!("{p}.key[{i}]"),
                format!(
                    "`{k}` is not a key part; use client_ip, route, method, path or header:<name>"
                ),
            ),
        }
    }
    let max_requests = NonZeroU64::new(l.max_requests);
    if max_requests.is_none() {
        cx.err(
            format!("{p}.max_requests"),
            "must be at least 1 (to block a route entirely, use degradation)",
        );
    } else if l.max_requests > MAX_LIMIT {
        cx.err(
            format!("{p}.max_requests"),
            format!("must be at most {MAX_LIMIT}; for no limit, remove the limit"),
        );
    }
    if l.window_seconds == 0 || l.window_seconds > 86_400 {
        cx.err(
            format!("{p}.window_seconds"),
            format!(
                "must be between 1 and 86400 seconds, got {}",
                l.window_seconds
            ),
        );
    }
    let mut extra_windows = Vec::new();
    for (i, w) in l.windows.iter().enumerate() {
        let wp = format!("{p}.windows[{i}]");
        let max = NonZeroU64::new(w.max_requests);
        if max.is_none() {
            cx.err(format!("{wp}.max_requests"), "must be at least 1");
        } else if w.max_requests > MAX_LIMIT {
            cx.err(
                format!("{wp}.max_requests"),
                format!("must be at most {MAX_LIMIT}"),
            );
        }
        if w.window_seconds == 0 || w.window_seconds > 86_400 {
            cx.err(
                format!("{wp}.window_seconds"),
                format!(
                    "must be between 1 and 86400 seconds, got {}",
                    w.window_seconds
                ),
            );
        } else if w.window_seconds == l.window_seconds
            || l.windows[..i]
                .iter()
                .any(|o| o.window_seconds == w.window_seconds)
        {
            cx.err(
                format!("{wp}.window_seconds"),
                format!(
                    "this limit already has a {} s window; give each window its own length",
                    w.window_seconds
                ),
            );
        }
        if let Some(max) = max {
            extra_windows.push((max, Duration::from_secs(w.window_seconds)));
        }
    }
    let sync_interval = Duration::from_millis(l.sync_interval_ms.unwrap_or(100));
    if l.mode == Mode::Approximate {
        if l.scope != Scope::Global {
            cx.err(
                format!("{p}.mode"),
                "`approximate` is how a global limit shares its count; set `scope: global`, \
                 or remove `mode` (a local limit is always exact)",
            );
        }
        if l.strategy == Strategy::TokenBucket {
            cx.err(
                format!("{p}.mode"),
                "`approximate` counts windows; use `strategy: sliding_window` or \
                 `fixed_window`, or `mode: exact` for a token bucket",
            );
        }
        if let Some(v) = l.sync_interval_ms.filter(|v| !(10..=10_000).contains(v)) {
            cx.err(
                format!("{p}.sync_interval_ms"),
                format!("must be between 10 and 10000 milliseconds, got {v}"),
            );
        }
    } else if l.sync_interval_ms.is_some() {
        cx.err(
            format!("{p}.sync_interval_ms"),
            "only `mode: approximate` syncs; add `mode: approximate` or remove it",
        );
    }
    Some(Limit {
        extra_windows,
        failure_mode: l.failure_mode,
        mode: l.mode,
        sync_interval,
        name: l.name,
        routes: l.routes,
        key,
        max_requests: max_requests?,
        window: Duration::from_secs(l.window_seconds),
        strategy: l.strategy,
        scope: l.scope,
        shadow: l.shadow,
    })
}

fn check_queue(cx: &mut Ctx, q: RawQueue) -> Option<Queue> {
    let max_concurrency = NonZeroU32::new(q.max_concurrency);
    if max_concurrency.is_none() {
        cx.err("queue.max_concurrency", "must be at least 1");
    }
    let timeout = ms(cx, "queue.timeout_ms", Some(q.timeout_ms), 0, 600_000);
    Some(Queue {
        max_concurrency: max_concurrency?,
        max_size: q.max_size,
        timeout,
    })
}

fn check_breaker(cx: &mut Ctx, p: &str, b: RawCircuitBreaker) -> Option<CircuitBreaker> {
    let consecutive_failures = NonZeroU32::new(b.consecutive_failures);
    if consecutive_failures.is_none() {
        cx.err(format!("{p}.consecutive_failures"), "must be at least 1");
    }
    let open = ms(cx, &format!("{p}.open_ms"), Some(b.open_ms), 0, 3_600_000);
    if let Some(r) = b.error_rate {
        if !(r > 0.0 && r <= 1.0) {
            cx.err(
                format!("{p}.error_rate"),
                format!("must be a share above 0 and at most 1 (0.5 = half the requests), got {r}"),
            );
        }
    }
    let defaults = CircuitBreaker::default();
    let min_requests = NonZeroU32::new(b.min_requests.unwrap_or(defaults.min_requests.get()));
    if min_requests.is_none() {
        cx.err(format!("{p}.min_requests"), "must be at least 1");
    }
    let window = ms(
        cx,
        &format!("{p}.window_ms"),
        b.window_ms,
        u64::try_from(defaults.window.as_millis()).unwrap_or(10_000),
        3_600_000,
    );
    let half_open_probes = NonZeroU32::new(
        b.half_open_probes
            .unwrap_or(defaults.half_open_probes.get()),
    );
    if half_open_probes.is_none() {
        cx.err(
            format!("{p}.half_open_probes"),
            "must be at least 1 (a breaker that lets no probe through never closes)",
        );
    }
    Some(CircuitBreaker {
        consecutive_failures: consecutive_failures?,
        open,
        error_rate: b.error_rate,
        min_requests: min_requests?,
        window,
        half_open_probes: half_open_probes?,
    })
}

fn check_indicators(cx: &mut Ctx, raw: RawLoadIndicators) -> LoadIndicators {
    let mut out = LoadIndicators::default();
    let secs = raw.window_seconds.unwrap_or(60);
    if !(1..=3600).contains(&secs) {
        cx.err(
            "load_indicators.window_seconds",
            format!("must be between 1 and 3600 seconds, got {secs}"),
        );
    }
    out.window = Duration::from_secs(secs);
    match raw.min_requests {
        Some(0) => cx.err(
            "load_indicators.min_requests",
            "must be at least 1 (1 judges error rate and latency from the first answer)",
        ),
        Some(n) => out.min_requests = n,
        None => {}
    }
    let given = [
        raw.request_rate,
        raw.latency_p50_ms,
        raw.latency_p95_ms,
        raw.latency_p99_ms,
        raw.error_rate,
        raw.queue_depth,
        raw.inflight,
    ];
    for ((slot, t), ind) in out.thresholds.iter_mut().zip(given).zip(Indicator::ALL) {
        // A section that is written replaces the default whole: `{ warning: 50 }` means no
        // critical level, not the runbook's.
        let Some(t) = t else { continue };
        let p = format!("load_indicators.{}", ind.as_str());
        for (name, v) in [("warning", t.warning), ("critical", t.critical)] {
            match v {
                Some(v) if !v.is_finite() || v < 0.0 => cx.err(
                    format!("{p}.{name}"),
                    format!("must be a number >= 0, got {v}"),
                ),
                Some(v) if ind == Indicator::ErrorRate && v > 1.0 => cx.err(
                    format!("{p}.{name}"),
                    format!("is a share of requests between 0 and 1 (0.05 = 5%), got {v}"),
                ),
                _ => {}
            }
        }
        if let (Some(w), Some(c)) = (t.warning, t.critical) {
            if w > c {
                cx.err(
                    format!("{p}.warning"),
                    format!("warning ({w}) is above critical ({c}); warning must come first"),
                );
            }
        }
        *slot = Thresholds {
            warning: t.warning,
            critical: t.critical,
        };
    }
    out
}

fn check_rate_limit_headers(cx: &mut Ctx, h: RawRateLimitHeaders) -> RateLimitHeaders {
    let on_admitted = match h.on_admitted {
        None => OnAdmitted::NearLimit,
        Some(RawOnAdmitted::Flag(true)) => OnAdmitted::Always,
        Some(RawOnAdmitted::Flag(false)) => OnAdmitted::Never,
        Some(RawOnAdmitted::Mode(m)) => match m.as_str() {
            "near_limit" => OnAdmitted::NearLimit,
            "always" => OnAdmitted::Always,
            "never" => OnAdmitted::Never,
            _ => {
                cx.err(
                    "rate_limit_headers.on_admitted",
                    format!("expected near_limit, always or never, got \"{m}\""),
                );
                OnAdmitted::NearLimit
            }
        },
    };
    let near_limit_ratio = h.near_limit_ratio.unwrap_or(0.2);
    if !(near_limit_ratio > 0.0 && near_limit_ratio <= 1.0) {
        cx.err(
            "rate_limit_headers.near_limit_ratio",
            format!("must be above 0 and at most 1 (a share of the quota), got {near_limit_ratio}"),
        );
    }
    RateLimitHeaders {
        ietf: h.ietf.unwrap_or(true),
        legacy: h.legacy.unwrap_or(true),
        on_admitted,
        near_limit_ratio,
    }
}

fn check_degradation(
    cx: &mut Ctx,
    d: RawDegradation,
    route_features: &BTreeSet<String>,
    route_names: &HashSet<String>,
) -> Degradation {
    // A feature no route has is allowed in `levels` (and so in `features` and `fallbacks`):
    // the app learns it is off from the disabled-features header and degrades by itself
    // (config/examples/shape.yaml relies on that). One spelt almost like a route's feature is
    // a typo, though: it would silently be a second, unused feature.
    let typo = |cx: &mut Ctx, p: &str, feature: &str| -> bool {
        if route_features.contains(feature) {
            return false;
        }
        let Some(meant) = crate::words::closest(feature, route_features.iter().map(String::as_str))
        else {
            return false;
        };
        cx.err(
            p,
            format!("unknown feature `{feature}`: no route has it; did you mean `{meant}`?"),
        );
        true
    };
    let near_route = |feature: &str| {
        !route_features.contains(feature)
            && crate::words::closest(feature, route_features.iter().map(String::as_str)).is_some()
    };
    // Known: the routes' features and the levels' others (a typo is reported, not offered).
    let mut known: BTreeSet<&str> = route_features.iter().map(String::as_str).collect();
    known.extend(
        d.levels
            .degraded
            .iter()
            .chain(&d.levels.minimal)
            .map(String::as_str)
            .filter(|f| !near_route(f)),
    );
    let list: Vec<&str> = known.iter().copied().collect();
    let unknown = |cx: &mut Ctx, p: &str, feature: &str| {
        if typo(cx, p, feature) || known.contains(feature) {
            return;
        }
        match crate::words::closest(feature, list.iter().copied()) {
            Some(meant) => cx.err(
                p,
                format!("unknown feature `{feature}`: no route or level names it; did you mean `{meant}`?"),
            ),
            None => cx.err(
                p,
                format!(
                    "unknown feature `{feature}`: no route or level names it; known features: {}",
                    list.join(", ")
                ),
            ),
        }
    };
    for (level, names) in [
        ("degraded", &d.levels.degraded),
        ("minimal", &d.levels.minimal),
    ] {
        for (i, feature) in names.iter().enumerate() {
            typo(cx, &format!("degradation.levels.{level}[{i}]"), feature);
        }
    }
    let mut fallbacks = BTreeMap::new();
    for (feature, f) in &d.fallbacks {
        let p = format!("degradation.fallbacks.{feature}");
        unknown(cx, &p, feature);
        let status = f.status.unwrap_or(503);
        if !(200..=599).contains(&status) {
            cx.err(
                format!("{p}.status"),
                format!("must be an HTTP status between 200 and 599, got {status}"),
            );
        }
        let mut headers = Vec::new();
        for (name, value) in &f.headers {
            if !valid_header_name(name) {
                cx.err(
                    format!("{p}.headers.{name}"),
                    format!("`{name}` is not a valid header name"),
                );
            }
            headers.push((name.to_ascii_lowercase(), value.clone()));
        }
        let cached = f.cached.then(|| {
            Duration::from_secs(secs(
                cx,
                &format!("{p}.ttl_seconds"),
                f.ttl_seconds,
                300,
                86_400,
            ))
        });
        if !f.cached && f.ttl_seconds.is_some() {
            cx.err(
                format!("{p}.ttl_seconds"),
                "only applies to a cached fallback; add `cached: true` or remove it",
            );
        }
        let grpc_status = f.grpc_status.unwrap_or(14);
        if grpc_status > 16 {
            cx.err(
                format!("{p}.grpc_status"),
                format!("must be a gRPC status code between 0 and 16 (14 is UNAVAILABLE), got {grpc_status}"),
            );
        }
        let has_static = f.status.is_some()
            || f.body.is_some()
            || f.content_type.is_some()
            || !f.headers.is_empty();
        fallbacks.insert(
            feature.clone(),
            Fallback {
                cached,
                answer: has_static.then(|| StaticAnswer {
                    status,
                    body: f.body.clone().unwrap_or_default(),
                    content_type: f.content_type.clone(),
                    headers,
                }),
                grpc: GrpcAnswer {
                    status: grpc_status,
                    message: f.grpc_message.clone(),
                },
            },
        );
    }
    for feature in d.features.keys() {
        unknown(cx, &format!("degradation.features.{feature}"), feature);
    }
    let mut feature_breakers = BTreeMap::new();
    for (feature, b) in d.feature_breakers {
        let p = format!("degradation.feature_breakers.{feature}");
        if !route_features.contains(&feature) {
            cx.err(
                &p,
                format!(
                    "no route has `feature: {feature}`, so no request would ever reach this breaker"
                ),
            );
        }
        if let Some(b) = check_breaker(cx, &p, b) {
            feature_breakers.insert(feature, b);
        }
    }
    let headers = d.headers.unwrap_or_default();
    let mut header = |key: &str, v: Option<String>, default: &str| -> Option<String> {
        let v = v.unwrap_or_else(|| default.to_string());
        if v.is_empty() {
            return None;
        }
        if !valid_header_name(&v) {
            cx.err(
                format!("degradation.headers.{key}"),
                format!("`{v}` is not a valid header name (use \"\" to send none)"),
            );
        }
        Some(v.to_ascii_lowercase())
    };
    let level_header = header("level", headers.level, "floodgate-degradation-level");
    let features_header = header(
        "disabled_features",
        headers.disabled_features,
        "floodgate-disabled-features",
    );
    let raw_cache = d.cache.unwrap_or_default();
    let cache = CacheLimits {
        max_bytes: raw_cache.max_bytes.unwrap_or(64 << 20),
        max_entry_bytes: raw_cache.max_entry_bytes.unwrap_or(1 << 20),
    };
    if cache.max_entry_bytes > cache.max_bytes {
        cx.err(
            "degradation.cache.max_entry_bytes",
            format!(
                "{} is more than the whole cache ({} bytes, degradation.cache.max_bytes)",
                cache.max_entry_bytes, cache.max_bytes
            ),
        );
    }
    let raw_aggressive = d.aggressive_cache.unwrap_or_default();
    for (i, r) in raw_aggressive.routes.iter().enumerate() {
        if !route_names.contains(r) {
            cx.err(
                format!("degradation.aggressive_cache.routes[{i}]"),
                format!("unknown route `{r}`; it must be the name of a route under `routes`"),
            );
        }
    }
    let aggressive_cache = AggressiveCache {
        enabled: raw_aggressive.enabled,
        ttl: Duration::from_secs(secs(
            cx,
            "degradation.aggressive_cache.ttl_seconds",
            raw_aggressive.ttl_seconds,
            300,
            86_400,
        )),
        routes: raw_aggressive.routes,
    };
    let auto = check_auto(cx, d.auto.unwrap_or_default());
    Degradation {
        level: d.level,
        degraded: d.levels.degraded,
        minimal: d.levels.minimal,
        fallbacks,
        features: d.features,
        level_header,
        features_header,
        cache,
        aggressive_cache,
        auto,
        feature_breakers,
    }
}

/// A whole number of seconds in 1..=max, `default` when absent.
fn secs(cx: &mut Ctx, path: &str, v: Option<u64>, default: u64, max: u64) -> u64 {
    let v = v.unwrap_or(default);
    if v == 0 || v > max {
        cx.err(
            path,
            format!("must be between 1 and {max} seconds, got {v}"),
        );
    }
    v
}

fn check_schedules(cx: &mut Ctx, raw: Vec<Option<RawSchedule>>, has_queue: bool) -> Vec<Schedule> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let Some(s) = s else { continue };
        let p = format!("schedules[{i}]");
        if !names.insert(s.name.clone()) {
            cx.err(
                format!("{p}.name"),
                format!("duplicate schedule name `{}`", s.name),
            );
        }
        if s.cron.split_whitespace().count() != 5 {
            cx.err(
                format!("{p}.cron"),
                format!(
                    "`{}` is not a 5-field cron expression (minute hour day-of-month month day-of-week, e.g. `0 8 * * 1-5`)",
                    s.cron
                ),
            );
        } else if let Err(e) = s.cron.parse::<croner::Cron>() {
            let why =
                crate::words::cron_problem(&s.cron).unwrap_or_else(|| format!("`{}`: {e}", s.cron));
            cx.err(format!("{p}.cron"), why);
        }
        if s.duration_minutes == 0 || s.duration_minutes > 7 * 24 * 60 {
            cx.err(
                format!("{p}.duration_minutes"),
                format!(
                    "must be between 1 and 10080 (a week), got {}",
                    s.duration_minutes
                ),
            );
        }
        if let Some(m) = s.limits_multiplier {
            if !(m.is_finite() && m > 0.0 && m <= 1000.0) {
                cx.err(
                    format!("{p}.limits_multiplier"),
                    format!("must be above 0 and at most 1000, got {m}"),
                );
            }
        }
        let q = s.queue.clone().unwrap_or_default();
        if s.queue.is_some() && !has_queue {
            cx.err(
                format!("{p}.queue"),
                "there is no `queue` section to resize; add one",
            );
        }
        if q.max_concurrency == Some(0) {
            cx.err(format!("{p}.queue.max_concurrency"), "must be at least 1");
        }
        if s.limits_multiplier.is_none() && s.level.is_none() && s.queue.is_none() {
            cx.err(
                &p,
                "changes nothing: give limits_multiplier, level or queue",
            );
        }
        out.push(Schedule {
            name: s.name,
            cron: s.cron,
            // Saturating: an out-of-range value is reported above, and must not overflow here.
            duration: Duration::from_secs(s.duration_minutes.saturating_mul(60)),
            limits_multiplier: s.limits_multiplier,
            level: s.level,
            queue_max_concurrency: q.max_concurrency,
            queue_max_size: q.max_size,
        });
    }
    out
}

fn check_auto(cx: &mut Ctx, a: RawAuto) -> AutoDegradation {
    let mut out = AutoDegradation {
        enabled: a.enabled,
        cooldown: Duration::from_secs(secs(
            cx,
            "degradation.auto.cooldown_seconds",
            a.cooldown_seconds,
            120,
            86_400,
        )),
        ..AutoDegradation::default()
    };
    let Some(rules) = a.rules else { return out };
    out.rules.clear();
    for (i, r) in rules.into_iter().enumerate() {
        let p = format!("degradation.auto.rules[{i}]");
        let trigger = if r.indicator == "breaker_open" {
            if r.above.is_some() {
                cx.err(
                    format!("{p}.above"),
                    "`breaker_open` takes no threshold; remove `above`",
                );
            }
            Some(Trigger::BreakerOpen)
        } else if let Some(ind) = Indicator::ALL.iter().find(|i| i.as_str() == r.indicator) {
            match r.above {
                Some(v) if v.is_finite() && v >= 0.0 => Some(Trigger::Above(*ind, v)),
                Some(v) => {
                    cx.err(
                        format!("{p}.above"),
                        format!("must be a number >= 0, got {v}"),
                    );
                    None
                }
                None => {
                    cx.err(
                        format!("{p}.above"),
                        format!(
                            "missing: the value of `{}` that triggers the rule",
                            r.indicator
                        ),
                    );
                    None
                }
            }
        } else {
            let names: Vec<&str> = Indicator::ALL.iter().map(|i| i.as_str()).collect();
            cx.err(
                format!("{p}.indicator"),
                format!(
                    "unknown indicator `{}`; use one of {} or breaker_open",
                    r.indicator,
                    names.join(", ")
                ),
            );
            None
        };
        if r.level == Level::Full {
            cx.err(
                format!("{p}.level"),
                "a rule degrades: use `degraded` or `minimal` (recovery to `full` is automatic)",
            );
        }
        let sustain = secs(
            cx,
            &format!("{p}.for_seconds"),
            Some(r.for_seconds),
            0,
            3600,
        );
        if let Some(trigger) = trigger {
            out.rules.push(AutoRule {
                trigger,
                sustain: Duration::from_secs(sustain),
                level: r.level,
            });
        }
    }
    out
}

fn check_server(cx: &mut Ctx, s: RawServer) -> Server {
    let threads = s.threads.unwrap_or(1);
    if threads == 0 || threads > 256 {
        cx.err(
            "server.threads",
            format!("must be between 1 and 256, got {threads}"),
        );
    }
    let max_header = s.max_request_header_bytes.unwrap_or(64 * 1024);
    // pingora itself refuses header blocks over 1 MiB with a 400, so a larger cap would never apply.
    if !(1024..=1_048_575).contains(&max_header) {
        cx.err(
            "server.max_request_header_bytes",
            format!("must be between 1024 and 1048575 bytes, got {max_header}"),
        );
    }
    Server {
        threads,
        drain_timeout: ms(
            cx,
            "server.drain_timeout_ms",
            s.drain_timeout_ms,
            30_000,
            3_600_000,
        ),
        max_request_header_bytes: max_header,
        path_normalization: s.path_normalization.unwrap_or_default(),
        header_read_timeout: ms(
            cx,
            "server.header_read_timeout_ms",
            s.header_read_timeout_ms,
            10_000,
            300_000,
        ),
        keepalive_timeout: ms(
            cx,
            "server.keepalive_timeout_ms",
            s.keepalive_timeout_ms,
            60_000,
            3_600_000,
        ),
        max_connections: {
            let n = s.max_connections.unwrap_or(10_000);
            if n == 0 || n > 1_000_000 {
                cx.err(
                    "server.max_connections",
                    format!("must be between 1 and 1000000, got {n}"),
                );
            }
            n
        },
    }
}
