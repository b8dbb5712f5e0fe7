//! `floodgate validate` and friends, run as a user would.

use std::process::Command;

fn floodgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_the_shipped_examples() {
    let (code, out, err) = floodgate(&[
        "validate",
        &repo("config/examples/quickstart.yaml"),
        &repo("config/reference.yaml"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("quickstart.yaml: ok"), "{out}");
}

#[test]
fn validate_notes_a_level_feature_no_route_has_and_still_says_ok() {
    // The reference (like the product's example) names `analytics` in its levels with no
    // route of that feature: allowed, the app reads it from the disabled-features header.
    let f = repo("config/reference.yaml");
    let (code, out, err) = floodgate(&["validate", &f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        err.contains(&format!(
            "{f}: note: degradation.levels.degraded[1]: feature `analytics` is on no route"
        )),
        "{err}"
    );
    // floodgatectl says the same, also on stderr, so `ok` stays the only line on stdout.
    let ctl = Command::new(crate::support::floodgatectl())
        .args(["config", "validate", &f])
        .output()
        .unwrap();
    assert!(ctl.status.success());
    assert_eq!(String::from_utf8_lossy(&ctl.stdout), format!("{f}: ok\n"));
    assert!(String::from_utf8_lossy(&ctl.stderr).contains("feature `analytics` is on no route"));
}

#[test]
fn validate_prints_every_error_with_file_line_and_path_and_exits_1() {
    let f = repo("config/tests/fixtures/invalid/references.yaml");
    let (code, _, err) = floodgate(&["validate", &f]);
    assert_eq!(code, 1);
    assert!(err.contains("5 errors in config"), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:12: routes[1].name: duplicate route name `api`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:18: limits[0].routes[1]: unknown route `ap`")),
        "{err}"
    );
}

#[test]
fn validate_of_non_yaml_names_the_line() {
    let f = repo("config/tests/fixtures/invalid/not_yaml.yaml");
    let (code, _, err) = floodgate(&["validate", &f]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{f}:5: not valid YAML")), "{err}");
}

#[test]
fn missing_file_and_no_arguments_say_what_to_do() {
    let (code, _, err) = floodgate(&["validate", "/nonexistent/floodgate.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/floodgate.yaml: cannot read config file"),
        "{err}"
    );
    let (code, _, err) = floodgate(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("--config FILE"), "{err}");
}

#[test]
fn help_teaches_with_examples() {
    let (code, out, _) = floodgate(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("floodgate validate"), "{out}");
    assert!(out.contains("SIGTERM"), "{out}");
}

#[test]
fn schema_subcommand_prints_the_committed_schema() {
    let (code, out, _) = floodgate(&["schema"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(repo("config/floodgate.schema.json")).unwrap();
    assert!(
        out == committed,
        "`floodgate schema` differs from config/floodgate.schema.json"
    );
}

/// `floodgate health` (the image's health check) says 0 for a ready sidecar and 1, with the
/// reason, where nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_probes_readyz_and_healthz() {
    let up = crate::support::Upstream::start("A").await;
    let fg = crate::support::Sidecar::start(up.port, "").await;
    let addr = format!("127.0.0.1:{}", fg.metrics_port);
    let (code, _, err) = floodgate(&["health", "--addr", &addr]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = floodgate(&["health", "--addr", &addr, "--live"]);
    assert_eq!(code, 0, "{err}");
    let closed = format!("127.0.0.1:{}", crate::support::free_port());
    let (code, _, err) = floodgate(&["health", "--addr", &closed]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("floodgate health: {closed}/readyz: ")),
        "{err}"
    );
}

/// Bearer tokens never go on the network in clear text by accident: neither the file's
/// `admin.listen` nor `--admin-listen` may leave loopback without `admin.tls`.
#[test]
fn admin_off_loopback_without_tls_is_refused_by_validate_and_at_start() {
    let f = repo("config/tests/fixtures/invalid/admin_in_clear.yaml");
    let (code, _, err) = floodgate(&["validate", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{f}:7: admin.listen: `0.0.0.0:9901` is not a loopback address"
        )),
        "{err}"
    );
    // A loopback file made non-loopback by the flag is refused before anything binds.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("floodgate.yaml");
    let (port, admin) = (crate::support::free_port(), crate::support::free_port());
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:{port}\nupstream: {{ address: 127.0.0.1:3000 }}\nadmin:\n  listen: 127.0.0.1:{admin}\n"),
    )
    .unwrap();
    let flag = format!("--admin-listen=0.0.0.0:{admin}");
    let (code, _, err) = floodgate(&["--config", cfg.to_str().unwrap(), &flag]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "admin.listen: `--admin-listen 0.0.0.0:{admin}` is not a loopback address and `admin.tls` is not set"
        )),
        "{err}"
    );
    assert!(err.contains("`admin.allow_insecure: true`"), "{err}");
}

// === floodgatectl's conventions ===

use crate::admin::{Admin, LIMITED};
use crate::support::{floodgatectl, Upstream};

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(floodgatectl())
        .args(args)
        .env_remove("FLOODGATE_TOKEN")
        .env_remove("FLOODGATE_TOKEN_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `floodgatectl ... status | READER` through `sh`, as a person types it; returns the
/// pipeline's stdout and stderr, where `ctl=N` is floodgatectl's own exit code.
fn piped(a: &Admin, reader: &str) -> (String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"{{ "$CTL" --addr "$ADDR" --token-file "$TOKEN" status; echo "ctl=$?" >&2; }} | {reader}"#
        ))
        .env("CTL", floodgatectl())
        .env("ADDR", &a.addr)
        .env("TOKEN", a.token("view.token"))
        .env_remove("FLOODGATE_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn status_into_a_closed_pipe_exits_0_without_a_panic() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    // An override in force makes `status` write, call the sidecar again, and write more:
    // by then `head -1` has gone.
    a.op(&["degrade", "set", "degraded", "--ttl", "1h"]);
    let (out, err) = piped(&a, "head -1");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("config version"), "{out}");
    assert!(err.contains("ctl=0") && !err.contains("panicked"), "{err}");
    // A reader that reads nothing: the very first write meets a closed pipe.
    let (_, err) = piped(&a, "true");
    assert!(err.contains("ctl=0") && !err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn yaml_says_what_json_says() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    a.op(&[
        "limits",
        "set",
        "per_client",
        "--max-requests",
        "2000",
        "--window",
        "60",
    ]);
    a.op(&["feature", "disable", "recommendations", "--ttl", "1h"]);
    for cmd in [&["overrides"][..], &["status"], &["limits", "show"]] {
        let json: serde_json::Value =
            serde_json::from_str(&a.op(&[&["-o", "json"], cmd].concat())).unwrap();
        let yaml: serde_json::Value =
            serde_yaml::from_str(&a.op(&[&["-o", "yaml"], cmd].concat())).unwrap();
        assert_eq!(yaml, json, "floodgatectl {cmd:?}");
    }
    // Override values are typed, not only words.
    let o: serde_json::Value = serde_json::from_str(&a.op(&["-o", "json", "overrides"])).unwrap();
    let by_key = |k: &str| {
        o.as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == k)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_key("limit:per_client")["max_requests"], 2000);
    // The window is a knob of its own.
    assert_eq!(by_key("window:per_client")["window_seconds"], 60);
    assert_eq!(by_key("feature:recommendations")["enabled"], false);
}

#[test]
fn ttl_outside_one_second_to_thirty_days_is_refused_naming_the_range() {
    for ttl in ["0s", "31d"] {
        let (code, _, err) = ctl(&["degrade", "set", "degraded", "--ttl", ttl]);
        assert_eq!(code, 2, "{ttl}: {err}");
        assert!(
            err.contains("--ttl") && err.contains("from 1s to 30d"),
            "{ttl}: {err}"
        );
    }
}

#[tokio::test]
async fn version_prints_the_client_and_the_sidecar() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    let v = env!("CARGO_PKG_VERSION");
    let out = a.op(&["version"]);
    assert!(out.contains(&format!("floodgatectl {v} (client)")), "{out}");
    assert!(out.contains(&format!("floodgate {v} (sidecar)")), "{out}");
    let json: serde_json::Value = serde_json::from_str(&a.op(&["-o", "json", "version"])).unwrap();
    assert_eq!(json, serde_json::json!({ "client": v, "sidecar": v }));
    let (code, out, _) = ctl(&["version", "--client"]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("floodgatectl {v} (client)").as_str())
    );
}

#[test]
fn completion_prints_a_shell_script() {
    let (code, out, err) = ctl(&["completion", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("complete") && out.contains("floodgatectl"),
        "{out}"
    );
    for shell in ["zsh", "fish"] {
        let (code, out, err) = ctl(&["completion", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("floodgatectl"), "{shell}: {out}");
    }
}

#[tokio::test]
async fn addr_at_the_proxy_port_says_it_is_not_the_admin_plane() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    let proxy = format!("127.0.0.1:{}", a.fg.port);
    let token = a.token("op.token").display().to_string();
    let (code, _, err) = ctl(&["--addr", &proxy, "--token-file", &token, "status"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "{proxy} answered but is not a Floodgate admin plane"
        )) && err.contains("admin.listen, default 127.0.0.1:9901"),
        "{err}"
    );
}

#[tokio::test]
async fn tables_have_header_rows_and_human_ttls() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    a.op(&[
        "degrade", "set", "degraded", "--ttl", "2h", "--reason", "INC-1",
    ]);
    let out = a.op(&["overrides"]);
    let mut lines = out.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        ["key", "value", "expires", "scope", "author", "reason"],
        "{out}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("level") && (row.contains(" 1h 59m left ") || row.contains(" 2h left ")),
        "{out}"
    );
    let limits = a.op(&["limits", "show"]);
    assert!(limits.starts_with("limit "), "{limits}");
}
