//! The two listener forms decode to the same model: the one-listener form (top-level `listen`
//! + `upstream`) is a listener named `default`; `listeners:` names each port.

use std::path::Path;

use floodgate_config::{parse, UpstreamProtocol, DEFAULT_LISTENER};

#[test]
fn the_one_listener_form_is_a_listener_named_default() {
    let c = parse(
        "listen: 127.0.0.1:8080\nupstream: { address: 127.0.0.1:3000 }\nroutes:\n  - { name: web, match: { listener: default } }\n",
        Path::new("f.yaml"),
    )
    .expect("valid");
    assert!(!c.named_listeners);
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].name, DEFAULT_LISTENER);
    assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.listeners[0].upstream.address, "127.0.0.1:3000");
    assert_eq!(c.routes[0].listener.as_deref(), Some("default"));
    assert_eq!(c.listen_key("default"), "listen");
}

#[test]
fn listeners_decode_each_with_its_own_upstream() {
    let c = parse(
        "listeners:
  - name: http
    listen: 0.0.0.0:15080
    upstream: { address: 127.0.0.1:9898 }
  - name: grpc
    listen: 0.0.0.0:15081
    upstream: { address: 127.0.0.1:9999, protocol: h2c, read_timeout_ms: 5000 }
routes:
  - { name: rpc, match: { listener: grpc } }
  - { name: web }
",
        Path::new("f.yaml"),
    )
    .expect("valid");
    assert!(c.named_listeners);
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["http", "grpc"]);
    let grpc = c.listener("grpc").expect("grpc");
    assert_eq!(grpc.listen.to_string(), "0.0.0.0:15081");
    assert_eq!(grpc.upstream.protocol, UpstreamProtocol::H2c);
    assert_eq!(grpc.upstream.read_timeout.as_millis(), 5000);
    let http = c.listener("http").expect("http");
    assert_eq!(http.upstream.protocol, UpstreamProtocol::Auto);
    assert_eq!(http.upstream.connect_timeout.as_millis(), 1000);
    assert_eq!(c.routes[0].listener.as_deref(), Some("grpc"));
    assert_eq!(c.routes[1].listener, None);
    assert_eq!(c.listen_key("grpc"), "listeners.grpc.listen");
}

#[test]
fn both_forms_at_once_name_both_and_every_bad_listener_item_is_reported() {
    let e = parse(
        "upstream: { address: 127.0.0.1:3000 }\nlisteners:\n  - { name: a, listen: 127.0.0.1:1, upstream: { address: x } }\n  - { name: b, listen: nope, upstream: { address: 127.0.0.1:2 } }\n  - { name: c, lisen: 127.0.0.1:3 }\n",
        Path::new("f.yaml"),
    )
    .expect_err("invalid")
    .to_string();
    assert!(
        e.contains("f.yaml:1: upstream: give either `listeners` (one or more named ports) or the top-level `listen` and `upstream`"),
        "{e}"
    );
    assert!(
        e.contains("listeners[0].upstream.address: `x` is not `host:port`"),
        "{e}"
    );
    assert!(
        e.contains("listeners[1].listen: `nope` is not an `ip:port` address"),
        "{e}"
    );
    assert!(e.contains("listeners[2].lisen: unknown key `lisen`"), "{e}");
    // The top-level `listen` is not missing: `listeners` stands in for it.
    assert!(!e.contains(": listen: missing required key"), "{e}");
}
