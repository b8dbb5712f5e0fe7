//! One fixture per validation rule in `tests/fixtures/invalid/`. Each file lists, in
//! `# expect:` lines, every error `floodgate validate` must report for it, in order, as
//! `line N: field.path: message` (a long message may be given by its beginning).

use std::path::Path;

#[test]
fn every_invalid_fixture_reports_exactly_its_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "fixtures missing from {}", dir.display());
    let mut failures = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let got: Vec<String> = match floodgate_config::parse(&text, &f) {
            Ok(_) => vec!["<valid>".to_string()],
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        };
        let ok =
            got.len() == expected.len() && got.iter().zip(&expected).all(|(g, e)| g.starts_with(e));
        if !ok {
            failures.push(format!(
                "{}\n  expected:\n    {}\n  got:\n    {}",
                f.display(),
                expected.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn all_errors_are_reported_together_with_file_and_line() {
    let path = Path::new("svc/floodgate.yaml");
    let err = floodgate_config::parse("listen: nope\nupstream: { address: x }\nqueue: { max_concurrency: 0, max_size: 1, timeout_ms: 1 }\n", path).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("svc/floodgate.yaml: 3 errors in config\n"),
        "{shown}"
    );
    assert!(
        shown.contains("  svc/floodgate.yaml:1: listen: `nope` is not an `ip:port` address"),
        "{shown}"
    );
    assert!(
        shown.contains("  svc/floodgate.yaml:2: upstream.address: `x` is not `host:port`"),
        "{shown}"
    );
    assert!(
        shown.contains("  svc/floodgate.yaml:3: queue.max_concurrency: must be at least 1"),
        "{shown}"
    );
}

/// The other side of `admin_in_clear.yaml`: off loopback is fine with TLS, or when allowed on
/// purpose; loopback (IPv4, IPv6, IPv4-mapped) needs neither.
#[test]
fn admin_off_loopback_is_valid_with_tls_or_allow_insecure() {
    let file = |admin: &str| {
        format!("listen: 127.0.0.1:8080\nupstream: {{ address: 127.0.0.1:3000 }}\nadmin:\n{admin}")
    };
    for admin in [
        "  listen: 0.0.0.0:9901\n  tls: { cert_file: /c.pem, key_file: /k.pem }\n",
        "  listen: 10.0.0.7:9901\n  allow_insecure: true\n",
        "  listen: 127.0.0.1:9901\n",
        "  listen: \"[::1]:9901\"\n",
        "  listen: \"[::ffff:127.0.0.1]:9901\"\n",
    ] {
        if let Err(e) = floodgate_config::parse(&file(admin), Path::new("f.yaml")) {
            panic!("{admin}: {e}");
        }
    }
    let e = floodgate_config::parse(&file("  listen: \"[::]:9901\"\n"), Path::new("f.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("admin.listen: `[::]:9901` is not a loopback address"),
        "{e}"
    );
}
