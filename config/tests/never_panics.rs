//! Property tests of the config loader: whatever YAML document it is given, `parse` returns a
//! config or a list of errors, never panics. Documents are generated structurally (mappings,
//! sequences, scalars) with the schema's own keys and values shaped like the real ones, and
//! by mutating the shipped reference file, so they get past decoding into deep validation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;
use serde_yaml::{Mapping, Number, Value};

/// Every property name in the JSON Schema: the keys the file may have, at any depth.
fn schema_keys() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let schema: serde_json::Value = serde_json::from_str(&floodgate_config::json_schema()).unwrap();
    let mut keys = BTreeSet::new();
    walk(&schema, &mut keys);
    assert!(keys.len() > 50, "the schema names its keys: {keys:?}");
    keys.into_iter().collect()
}

/// Strings the schema gives meaning to, and a few that break things.
const WORDS: &[&str] = &[
    "127.0.0.1:8080",
    "0.0.0.0:9901",
    "[::1]:9901",
    "[::]:0",
    "localhost:3000",
    "127.0.0.1",
    "redis://127.0.0.1:6379",
    "rediss://h:1",
    "client_ip",
    "route",
    "method",
    "path",
    "header:x-user",
    "header:",
    "sliding_window",
    "fixed_window",
    "token_bucket",
    "local",
    "global",
    "open",
    "deny",
    "full",
    "degraded",
    "minimal",
    "critical",
    "normal",
    "low",
    "operator",
    "viewer",
    "auto",
    "http1",
    "h2c",
    "json",
    "text",
    "breaker_open",
    "error_rate",
    "latency_p95_ms",
    "queue_depth",
    "0 8 * * 1-5",
    "* * * * *",
    "99 99 * * *",
    "/api",
    "api",
    "default",
    "reco",
    "recommendations",
    "GET",
    "get",
    "(",
    "^/a[",
    "",
    " ",
    "\u{0}",
    "é/ü",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(20),
            Just(65_535),
            Just(u64::from(u32::MAX)),
            Just(u64::from(u32::MAX) + 1),
            Just(1_000_000_000_001),
            Just(u64::MAX),
            any::<u64>(),
        ]
        .prop_map(|n| Value::Number(n.into())),
        prop_oneof![Just(-1i64), Just(i64::MIN), any::<i64>()]
            .prop_map(|n| Value::Number(n.into())),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(0.05),
            Just(1.5),
            Just(1e308),
            any::<f64>(),
        ]
        .prop_map(|f| Value::Number(Number::from(f))),
        prop::sample::select(WORDS).prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn key(keys: &[String]) -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(keys.to_vec()).prop_map(Value::String),
        1 => prop::sample::select(WORDS).prop_map(|s| Value::String(s.to_string())),
        1 => scalar(),
    ]
}

/// Any YAML value, nested up to a few levels, its mapping keys mostly the schema's.
fn value(keys: Vec<String>) -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 96, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Sequence),
            prop::collection::vec((key(&keys), inner), 0..6)
                .prop_map(|kv| Value::Mapping(kv.into_iter().collect::<Mapping>())),
        ]
    })
}

/// A document whose top level is a mapping of the schema's top-level keys (plus a stray one
/// now and then), each with any value.
fn document(keys: Vec<String>) -> impl Strategy<Value = Value> {
    // The schema's own keys, and one it does not have.
    let top: Vec<&str> = floodgate_config::TOP_LEVEL
        .iter()
        .copied()
        .chain(["listeners"])
        .collect();
    prop::collection::vec((prop::sample::select(top), value(keys)), 0..10).prop_map(|kv| {
        Value::Mapping(
            kv.into_iter()
                .map(|(k, v)| (Value::String(k.to_string()), v))
                .collect(),
        )
    })
}

/// Replaces the node reached by following `steps` (each an index, taken modulo the size of
/// the mapping or sequence it meets) with `new`.
fn mutate(node: &mut Value, steps: &[usize], new: Value) {
    let len = match node {
        Value::Mapping(m) => m.len(),
        Value::Sequence(q) => q.len(),
        _ => 0,
    };
    let Some((&step, rest)) = steps.split_first().filter(|_| len > 0) else {
        *node = new;
        return;
    };
    let i = step % len;
    match node {
        Value::Mapping(m) => {
            if let Some(child) = m.values_mut().nth(i) {
                mutate(child, rest, new);
            }
        }
        Value::Sequence(q) => mutate(&mut q[i], rest, new),
        _ => {}
    }
}

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The property: `parse` answers, and an error answer says at least one thing.
fn loads_or_explains(text: &str) -> Result<(), TestCaseError> {
    match floodgate_config::parse(text, Path::new("prop.yaml")) {
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(!e.errors.is_empty(), "an error without errors for:\n{text}");
            prop_assert!(
                e.errors.iter().all(|f| !f.message.is_empty()),
                "an empty message for:\n{text}\n{e}"
            );
            // Display walks every error with its line: it must not panic either.
            let _ = e.to_string();
            Ok(())
        }
    }
}

proptest! {
    // 256 cases each (proptest's default; PROPTEST_CASES=10000 for a longer hunt).

    #[test]
    fn any_structured_document_loads_or_explains(doc in document(schema_keys())) {
        let text = serde_yaml::to_string(&doc).unwrap();
        loads_or_explains(&text)?;
    }

    #[test]
    fn the_reference_file_with_any_node_replaced_loads_or_explains(
        mutations in prop::collection::vec(
            (prop::collection::vec(any::<usize>(), 0..6), value(schema_keys())),
            1..4,
        )
    ) {
        let mut doc = reference();
        for (steps, new) in mutations {
            mutate(&mut doc, &steps, new);
        }
        let text = serde_yaml::to_string(&doc).unwrap();
        loads_or_explains(&text)?;
    }

    #[test]
    fn any_text_loads_or_explains(text in "[a-z_:0-9 .\\-\\[\\]{},#&*!|>'\"%@\n\t]{0,300}") {
        loads_or_explains(&text)?;
    }
}

/// Paths (as mapping/sequence positions) of every scalar in `v`.
fn leaves(v: &Value, at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    let children: Vec<&Value> = match v {
        Value::Mapping(m) => m.values().collect(),
        Value::Sequence(q) => q.iter().collect(),
        _ => {
            out.push(at.clone());
            return;
        }
    };
    for (i, c) in children.into_iter().enumerate() {
        at.push(i);
        leaves(c, at, out);
        at.pop();
    }
}

/// Not left to chance: every scalar of the reference file, one at a time, set to each value
/// at the edge of what a field takes (overflowing sizes, NaN, wrong types).
#[test]
fn every_leaf_of_the_reference_at_every_edge_loads_or_explains() {
    let edges = [
        Value::Null,
        Value::Bool(true),
        Value::Number(0u64.into()),
        Value::Number((-1i64).into()),
        Value::Number(u64::MAX.into()),
        Value::Number(i64::MIN.into()),
        Value::Number((u64::from(u32::MAX) + 1).into()),
        Value::Number(Number::from(f64::NAN)),
        Value::Number(Number::from(f64::INFINITY)),
        Value::Number(Number::from(1e308)),
        Value::String(String::new()),
        Value::Sequence(vec![]),
        Value::Mapping(Mapping::new()),
    ];
    let base = reference();
    let mut paths = Vec::new();
    leaves(&base, &mut Vec::new(), &mut paths);
    assert!(paths.len() > 100, "{} leaves", paths.len());
    for path in &paths {
        for edge in &edges {
            let mut doc = base.clone();
            mutate(&mut doc, path, edge.clone());
            let text = serde_yaml::to_string(&doc).unwrap();
            let run = std::panic::catch_unwind(|| loads_or_explains(&text));
            match run {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("parse panicked with leaf {path:?} = {edge:?}"),
            }
        }
    }
}

/// The mutation really reaches deep validation: a value replaced inside the reference file's
/// limits is judged there, with its path.
#[test]
fn a_mutation_reaches_deep_validation() {
    let mut doc = reference();
    let limits = doc
        .as_mapping()
        .and_then(|m| m.keys().position(|k| k.as_str() == Some("limits")))
        .unwrap();
    let max = doc["limits"][0]
        .as_mapping()
        .and_then(|m| m.keys().position(|k| k.as_str() == Some("max_requests")))
        .unwrap();
    mutate(&mut doc, &[limits, 0, max], Value::Number(0u64.into()));
    let text = serde_yaml::to_string(&doc).unwrap();
    let e = floodgate_config::parse(&text, Path::new("prop.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("limits[0].max_requests: must be at least 1"),
        "{e}"
    );
}
