//! Route matching: picks the first configured route whose conditions hold for a request, or the
//! implicit `default` route. Plain Rust over `http` types so it is unit-tested without pingora.

use floodgate_config::{PathMatch, Priority, Route, DEFAULT_ROUTE};
use floodgate_policy::HeaderLookup;
use http::Method;

/// A compiled route table, built once per config snapshot.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    default: Route,
}

/// What the router needs to know of a request.
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Host (from the URI authority or the `Host` header), possibly with a port.
    pub host: Option<&'a str>,
    /// Request headers.
    pub headers: &'a dyn HeaderLookup,
    /// Name of the listener the request came in on.
    pub listener: &'a str,
}

impl Router {
    /// Compiles `routes` (already validated) into a table.
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes,
            default: Route {
                name: DEFAULT_ROUTE.to_string(),
                path: PathMatch::Any,
                methods: None,
                host: None,
                headers: Vec::new(),
                listener: None,
                feature: None,
                priority: Priority::Normal,
            },
        }
    }

    /// The index of the matching route (`routes().len()` means the default route) and the route.
    pub fn route(&self, req: &RequestView<'_>) -> (usize, &Route) {
        match self.routes.iter().position(|r| matches(r, req)) {
            Some(i) => (i, &self.routes[i]),
            None => (self.routes.len(), &self.default),
        }
    }

    /// Name of the route at `index` (as returned by [`Router::route`]).
    pub fn name(&self, index: usize) -> &str {
        self.routes
            .get(index)
            .map_or(self.default.name.as_str(), |r| r.name.as_str())
    }

    /// Every route, the default last; indices agree with [`Router::route`].
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(std::iter::once(&self.default))
    }
}

fn matches(r: &Route, req: &RequestView<'_>) -> bool {
    if r.listener.as_deref().is_some_and(|l| l != req.listener) {
        return false;
    }
    let path_ok = match &r.path {
        PathMatch::Any => true,
        PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
        PathMatch::Exact(p) => req.path == p,
        PathMatch::Regex(re) => re.is_match(req.path),
    };
    if !path_ok {
        return false;
    }
    if let Some(methods) = &r.methods {
        if !methods.iter().any(|m| m == req.method.as_str()) {
            return false;
        }
    }
    if let Some(want) = &r.host {
        let Some(host) = req.host else { return false };
        // Strip a port, but not the colons of a bracketed IPv6 literal.
        let bare = match host.rsplit_once(':') {
            Some((h, port)) if !port.contains(']') => h,
            _ => host,
        };
        if !bare.eq_ignore_ascii_case(want) {
            return false;
        }
    }
    r.headers.iter().all(|(name, value)| {
        req.headers
            .header(name.as_str())
            .is_some_and(|v| v == value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn router(yaml_routes: &str) -> Router {
        let src = format!("listen: 127.0.0.1:8080\nupstream: {{ address: 127.0.0.1:3000 }}\nroutes:\n{yaml_routes}");
        let cfg = floodgate_config::parse(&src, std::path::Path::new("t")).unwrap();
        Router::new(cfg.routes)
    }

    fn pick<'a>(
        r: &'a Router,
        method: Method,
        path: &str,
        host: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> &'a str {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        let view = RequestView {
            method: &method,
            path,
            host,
            headers: &h,
            listener: "default",
        };
        &r.route(&view).1.name
    }

    #[test]
    fn first_match_wins_and_unmatched_is_default() {
        let r = router("  - name: rec\n    match: { path_prefix: /api/rec }\n  - name: api\n    match: { path_prefix: /api, methods: [GET, POST] }\n");
        assert_eq!(pick(&r, Method::GET, "/api/rec/1", None, &[]), "rec");
        assert_eq!(pick(&r, Method::GET, "/api/x", None, &[]), "api");
        assert_eq!(pick(&r, Method::DELETE, "/api/x", None, &[]), "default");
        assert_eq!(pick(&r, Method::GET, "/other", None, &[]), "default");
        assert_eq!(r.all().count(), 3);
    }

    #[test]
    fn exact_regex_host_and_headers() {
        let r = router(concat!(
            "  - name: exact\n    match: { path_exact: /a }\n",
            "  - name: re\n    match: { path_regex: \"^/items/[0-9]+$\" }\n",
            "  - name: host\n    match: { host: Shop.Example.com }\n",
            "  - name: hdr\n    match: { headers: { x-tenant: gold } }\n",
        ));
        assert_eq!(pick(&r, Method::GET, "/a", None, &[]), "exact");
        assert_eq!(pick(&r, Method::GET, "/a/b", None, &[]), "default");
        assert_eq!(pick(&r, Method::GET, "/items/42", None, &[]), "re");
        assert_eq!(pick(&r, Method::GET, "/items/x", None, &[]), "default");
        assert_eq!(
            pick(&r, Method::GET, "/z", Some("shop.example.com:8080"), &[]),
            "host"
        );
        assert_eq!(
            pick(&r, Method::GET, "/z", Some("other.com"), &[]),
            "default"
        );
        assert_eq!(
            pick(&r, Method::GET, "/z", None, &[("x-tenant", "gold")]),
            "hdr"
        );
        assert_eq!(
            pick(&r, Method::GET, "/z", None, &[("x-tenant", "silver")]),
            "default"
        );
    }

    #[test]
    fn a_route_for_one_listener_matches_only_its_requests() {
        let src = "listeners:\n  - { name: http, listen: 127.0.0.1:8080, upstream: { address: 127.0.0.1:3000 } }\n  - { name: grpc, listen: 127.0.0.1:8081, upstream: { address: 127.0.0.1:3001 } }\nroutes:\n  - { name: rpc, match: { listener: grpc, path_prefix: /pkg. } }\n  - { name: any }\n";
        let cfg = floodgate_config::parse(src, std::path::Path::new("t")).unwrap();
        let r = Router::new(cfg.routes);
        let h = HeaderMap::new();
        let on = |listener| {
            let view = RequestView {
                method: &Method::POST,
                path: "/pkg.Svc/Call",
                host: None,
                headers: &h,
                listener,
            };
            r.route(&view).1.name.clone()
        };
        assert_eq!(on("grpc"), "rpc");
        assert_eq!(on("http"), "any");
    }
}
