//! Decodes one piece of the document reporting *every* field that does not fit, not only the
//! first. serde stops at the first error of a value, so a list item with a bad number and an
//! unknown key used to show only the number. Here each error's spot is patched in a copy of
//! the value (the bad key removed, or a neutral stand-in put there) and decoding runs again,
//! until it succeeds or a spot cannot be patched. The value decoded from a patched copy is
//! never returned: stand-ins must not reach the semantic checks (a stand-in `0` would be
//! reported as "must be at least 1").

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::{Mapping, Value};

/// More than any real file has in one section; bounds the work on a pathological one.
const MAX_ERRORS: usize = 50;

/// One step into a YAML value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// An error serde reported: where (as serde_path_to_error prints it, `.` for the value
/// itself) and serde's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawError {
    pub path: String,
    pub message: String,
    /// The spot to patch: for a missing key, the key's own (absent) place.
    spot: Option<Vec<Step>>,
}

fn attempt<T: DeserializeOwned>(value: &Value) -> Result<T, RawError> {
    serde_path_to_error::deserialize::<_, T>(value.clone()).map_err(|e| {
        let steps: Option<Vec<Step>> = e
            .path()
            .iter()
            .map(|s| match s {
                Segment::Seq { index } => Some(Step::Index(*index)),
                Segment::Map { key } => Some(Step::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let spot = steps.map(|mut s| {
            if let Some(k) = missing_key(&message) {
                s.push(Step::Key(k.to_string()));
            }
            s
        });
        RawError {
            path,
            message,
            spot,
        }
    })
}

fn missing_key(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Decodes `value` as `T`, or returns every error found in it, in the order found.
pub(crate) fn decode_all<T: DeserializeOwned>(value: Value) -> Result<T, Vec<RawError>> {
    let mut value = value;
    let mut errors: Vec<RawError> = Vec::new();
    while errors.len() < MAX_ERRORS {
        match attempt::<T>(&value) {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) => break,
            Err(e) => {
                let patched = e
                    .spot
                    .as_ref()
                    .and_then(|spot| patch::<T>(&value, spot, &e));
                errors.push(e);
                match patched {
                    Some(v) => value = v,
                    None => break,
                }
            }
        }
    }
    Err(errors)
}

/// A copy of `value` in which the error's spot no longer fails: an unknown key removed, or
/// a bad (or missing) value replaced by the first stand-in that fits: a zero, an empty
/// string, false, an empty list, an empty mapping or the first name an enum takes. A known
/// key is never removed: serde would report it missing only at the end of its mapping,
/// after errors this loop has not seen yet, so whether removing it helped cannot be told.
fn patch<T: DeserializeOwned>(value: &Value, spot: &[Step], e: &RawError) -> Option<Value> {
    let (last, parent) = spot.split_last()?;
    if e.message.starts_with("unknown field `") {
        let mut copy = value.clone();
        return put(&mut copy, parent, last, None).then_some(copy);
    }
    let mut stand_ins: Vec<Option<Value>> = vec![
        Some(Value::from(0)),
        Some(Value::from("")),
        Some(Value::from(false)),
        Some(Value::Sequence(Vec::new())),
        Some(Value::Mapping(Mapping::new())),
    ];
    stand_ins.extend(first_variant(&e.message).map(|v| Some(Value::from(v))));
    let mut i = 0;
    while i < stand_ins.len() {
        let mut copy = value.clone();
        if put(&mut copy, parent, last, stand_ins[i].clone()) {
            match attempt::<T>(&copy) {
                Ok(_) => return Some(copy),
                Err(next) if !next.spot.as_deref().is_some_and(|s| s.starts_with(spot)) => {
                    return Some(copy)
                }
                Err(next) => {
                    // An enum says which names it takes only once it is given a wrong one.
                    if let Some(v) = first_variant(&next.message) {
                        let v = Some(Value::from(v));
                        if !stand_ins.contains(&v) {
                            stand_ins.push(v);
                        }
                    }
                }
            }
        }
        i += 1;
    }
    None
}

/// `` `a` `` from serde's "expected `a` or `b`" / "expected one of `a`, `b`".
fn first_variant(message: &str) -> Option<String> {
    let (_, expected) = message.split_once(", expected ")?;
    let rest = expected.strip_prefix("one of ").unwrap_or(expected);
    let name = rest.strip_prefix('`')?.split('`').next()?;
    Some(name.to_string())
}

/// Sets (`Some`) or removes (`None`) the entry `last` of the container at `parent`. A list
/// item is never removed: that would renumber the items after it.
fn put(root: &mut Value, parent: &[Step], last: &Step, new: Option<Value>) -> bool {
    let mut at = root;
    for step in parent {
        let next = match (step, at) {
            (Step::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Step::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at, new) {
        (Step::Key(k), Value::Mapping(m), None) => m.remove(k.as_str()).is_some(),
        (Step::Key(k), Value::Mapping(m), Some(v)) => {
            m.insert(Value::from(k.as_str()), v);
            true
        }
        (Step::Index(i), Value::Sequence(s), Some(v)) if *i < s.len() => {
            s[*i] = v;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        count: u64,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Slow,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        size: u32,
    }

    fn errors(yaml: &str) -> Vec<(String, String)> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        decode_all::<Item>(v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    #[test]
    fn reports_every_bad_field_of_one_value() {
        let got =
            errors("count: 1s\nmode: medium\nextra: 1\ninner: [{ size: -1 }, { size: 2, x: 1 }]\n");
        let mut paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        paths.sort_unstable();
        // `.` is the missing `name`; `count`, although bad, is not reported missing.
        assert_eq!(
            paths,
            [".", "count", "extra", "inner[0].size", "inner[1].x", "mode"],
            "{got:?}"
        );
        assert!(
            got.iter().any(|(_, m)| m == "missing field `name`"),
            "{got:?}"
        );
    }

    #[test]
    fn a_stand_in_is_never_returned_and_a_valid_value_decodes() {
        let v: Value = serde_yaml::from_str("name: a\ncount: 1\n").unwrap();
        assert_eq!(decode_all::<Item>(v).unwrap().count, 1);
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_one_error() {
        assert_eq!(errors("[1, 2]").len(), 1);
    }
}
