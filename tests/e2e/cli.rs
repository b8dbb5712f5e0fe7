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
