//! The shipped examples and the shared shape file must always validate, each example must say
//! when to use it, and the committed JSON Schema must match the config types. (That each
//! example also *starts* is tests/e2e/examples.rs.)

use std::path::Path;

fn manifest(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The task examples in config/examples/, beyond the quickstart and the shape file.
const TASK_EXAMPLES: &[&str] = &[
    "examples/api-keys-redis.yaml",
    "examples/grpc-service.yaml",
    "examples/cached-fallback.yaml",
    "examples/slow-app-queue.yaml",
    "examples/scheduled-event.yaml",
    "examples/http-and-grpc.yaml",
];

#[test]
fn shipped_examples_validate() {
    let fixed = [
        "examples/quickstart.yaml",
        "examples/shape.yaml",
        "reference.yaml",
    ];
    for f in fixed.iter().chain(TASK_EXAMPLES) {
        let path = manifest(f);
        if let Err(e) = floodgate_config::load(&path) {
            panic!("{f} does not validate:\n{e}");
        }
    }
}

/// Every YAML file in config/examples/ is checked above, and each task example opens with a
/// comment saying when to use it: a new file cannot be added and forgotten.
#[test]
fn every_example_is_checked_and_says_when_to_use_it() {
    let mut on_disk: Vec<String> = std::fs::read_dir(manifest("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("examples/{n}"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TASK_EXAMPLES.iter().map(|s| s.to_string()).collect();
    listed.extend([
        "examples/quickstart.yaml".into(),
        "examples/shape.yaml".into(),
    ]);
    listed.sort();
    assert_eq!(on_disk, listed, "config/examples/ and TASK_EXAMPLES differ");
    for f in TASK_EXAMPLES {
        let text = std::fs::read_to_string(manifest(f)).unwrap();
        assert!(
            text.starts_with("# When to use: "),
            "{f} must open with `# When to use: ...`"
        );
    }
}

#[test]
fn shape_file_keeps_every_key_meaning() {
    let c = floodgate_config::load(&manifest("examples/shape.yaml")).unwrap();
    assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.listeners[0].upstream.address, "127.0.0.1:3000");
    assert_eq!(c.listeners[0].upstream.read_timeout.as_millis(), 30000);
    assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9090");
    assert_eq!(c.admin.as_ref().unwrap().tokens.len(), 2);
    assert_eq!(c.redis.as_ref().unwrap().expected_replicas.get(), 3);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].feature.as_deref(), Some("recommendations"));
    assert_eq!(c.routes[0].priority, floodgate_config::Priority::Low);
    assert_eq!(c.limits[0].max_requests.get(), 1000);
    assert_eq!(c.limits[0].scope, floodgate_config::Scope::Global);
    assert_eq!(c.queue.as_ref().unwrap().max_concurrency.get(), 64);
    assert_eq!(
        c.circuit_breaker
            .as_ref()
            .unwrap()
            .consecutive_failures
            .get(),
        5
    );
    assert_eq!(c.degradation.minimal.len(), 4);
    assert_eq!(
        c.degradation.fallbacks["recommendations"]
            .answer
            .as_ref()
            .unwrap()
            .status,
        200
    );
}

#[test]
fn json_schema_is_current() {
    let path = manifest("floodgate.schema.json");
    let want = floodgate_config::json_schema();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    // Editors show these names: the Rust types' `Raw` prefix is not the user's word.
    assert!(!want.contains("Raw"), "a schema name still says Raw");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "config/floodgate.schema.json is stale: run `UPDATE_SCHEMA=1 cargo test -p floodgate-config --test examples`"
    );
}
