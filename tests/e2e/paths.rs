//! Respelled paths against a switched-off route and a path-keyed limit, sent byte for byte on
//! raw sockets (HTTP clients would normalise some of them first): every respelling of a
//! policed path meets the same policy, ambiguous encodings are refused with 400, and the app
//! receives the path the policy judged.

use crate::support::*;

const POLICY: &str = "routes:
  - name: admin
    match: { path_prefix: /admin }
    feature: admin
  - name: api
    match: { path_prefix: /api/ }
limits:
  - name: per_path
    routes: [api]
    key: [path]
    max_requests: 2
    window_seconds: 60
    strategy: fixed_window
degradation:
  level: degraded
  levels:
    degraded: [admin]
  fallbacks:
    admin: { status: 403, body: \"admin is off\" }
";

/// Status and `floodgate-reason` of a GET of `target`, written verbatim.
async fn get_raw(port: u16, target: &[u8]) -> (u16, Option<String>) {
    let mut c = RawConn::connect(port).await;
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nhost: app\r\n\r\n");
    c.send(&req).await;
    let r = c
        .response()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(target)));
    (r.status, r.header("floodgate-reason").map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_respelling_walks_past_a_switched_off_route() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, POLICY).await;
    let caught: &[&[u8]] = &[
        b"/admin/secret",
        b"/x/../admin/secret",
        b"/x/%2e%2e/admin/secret",
        b"/x/%2E%2E/admin/secret",
        b"/x/.%2e/admin/secret",
        b"//admin/secret",
        b"/./admin/secret",
        b"/%61dmin/secret",
        b"/%61%64%6d%69%6e/secret",
        b"/../admin/secret",
        b"/a/b/../../../../admin/secret",
        b"/admin/./secret",
        b"/admin;jsessionid=1/secret",
        b"/x/..//admin/secret",
        b"/admin/secret?q=../../x",
    ];
    for &p in caught {
        let got = get_raw(fg.port, p).await;
        assert_eq!(
            got,
            (403, Some("degraded".into())),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    let refused: &[&[u8]] = &[
        b"/admin%2fsecret",
        b"/x/..%2fadmin/secret",
        b"/x/..%2Fadmin/secret",
        b"/x/..%5cadmin/secret",
        b"/x/..\\admin/secret",
        b"/admin%00/secret",
        b"/admin/secret%0d%0ax",
        b"/public/..;/admin/secret",
        b"/admin%zz",
        b"/a\x00b",
        b"/a\x01b",
    ];
    for &p in refused {
        let (status, _) = get_raw(fg.port, p).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(p));
    }
    assert!(
        !up.stats.paths().iter().any(|p| p.contains("admin")),
        "the app saw {:?}",
        up.stats.paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_keyed_limit_counts_every_spelling_as_one_path_and_the_app_sees_it() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, POLICY).await;
    let spellings: &[&[u8]] = &[
        b"/api/x",
        b"//api/x",
        b"/api/./x",
        b"/api/y/../x",
        b"/%61pi/x",
        b"/api//x",
        b"/api/%78",
    ];
    let mut statuses = Vec::new();
    for &p in spellings {
        statuses.push(get_raw(fg.port, p).await.0);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429, 429]);
    let seen: Vec<String> = up.stats.paths();
    assert_eq!(
        seen,
        ["/api/x", "/api/x"],
        "the app receives the canonical path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_a_non_canonical_path_and_off_forwards_it_raw() {
    let up = Upstream::start("app").await;
    let strict = Sidecar::start_custom(|port, metrics_port| {
        config_yaml(port, metrics_port, up.port, POLICY)
            .replace("server:\n", "server:\n  path_normalization: strict\n")
    })
    .await;
    assert_eq!(get_raw(strict.port, b"/x/../admin/secret").await.0, 400);
    assert_eq!(get_raw(strict.port, b"/%61pi/x").await.0, 400);
    assert_eq!(get_raw(strict.port, b"/admin/secret").await.0, 403);
    assert_eq!(get_raw(strict.port, b"/api/x").await.0, 200);
    // `off` is the documented risk: the raw path is judged (no route matches it) and sent.
    let off = Sidecar::start_custom(|port, metrics_port| {
        config_yaml(port, metrics_port, up.port, POLICY)
            .replace("server:\n", "server:\n  path_normalization: off\n")
    })
    .await;
    assert_eq!(get_raw(off.port, b"/x/../admin/secret").await.0, 200);
    assert!(up.stats.paths().contains(&"/x/../admin/secret".to_string()));
}
