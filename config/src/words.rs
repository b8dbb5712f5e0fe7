//! Messages in the words of the person who wrote the file rather than of the Rust types
//! behind it: what a number field counts, which field of a cron expression is wrong, and
//! which name a misspelt one was probably meant to be.

/// serde's "invalid type: string \"1s\", expected u64" for the field at `path`, said with the
/// unit the field's name gives (`_seconds`, `_ms`, `_bytes`, counts); `None` when `message`
/// is not a type or value error.
pub(crate) fn type_error(path: &str, message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = rest.split_once(", expected ")?;
    let got = shown(found);
    let (field, parent) = field_names(path);
    let want = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => {
            let what = whole_number(field, parent);
            match found
                .strip_prefix("integer `")
                .and_then(|n| n.strip_suffix('`'))
            {
                Some(n) if n.starts_with('-') => format!("{what}, 0 or more"),
                Some(_) => format!("{what} up to {}", max_of(expected)),
                None => what,
            }
        }
        "f32" | "f64" => number(field, parent),
        "a boolean" => "true or false".to_string(),
        "a string" => "text (quote a value that looks like a number)".to_string(),
        "a sequence" => "a list".to_string(),
        e if e.starts_with("struct ") || e.starts_with("a map") => {
            "a mapping of keys (`key: value`)".to_string()
        }
        _ => return None,
    };
    Some(format!("expected {want}, got {got}"))
}

/// The field's own name and its parent's (the last two keys of `path`, list indices dropped).
fn field_names(path: &str) -> (&str, &str) {
    let mut keys = path
        .rsplit('.')
        .map(|k| k.split('[').next().unwrap_or(k))
        .filter(|k| !k.is_empty());
    (keys.next().unwrap_or(""), keys.next().unwrap_or(""))
}

/// What a whole-number field counts, from its name.
fn whole_number(field: &str, parent: &str) -> String {
    let counted = match field {
        f if f.ends_with("_seconds") => "seconds",
        f if f.ends_with("_ms") => "milliseconds",
        f if f.ends_with("_minutes") => "minutes",
        f if f.ends_with("_bytes") => "bytes",
        "max_requests" | "min_requests" => "requests",
        "max_concurrency" => "requests in flight",
        "max_size" => "waiting requests",
        "consecutive_failures" => "failures",
        "half_open_probes" => "probes",
        "expected_replicas" => "sidecars",
        "threads" => "threads",
        "max_connections" => "connections",
        "status" => return "an HTTP status code (e.g. 503)".to_string(),
        "grpc_status" => return "a gRPC status code, 0 to 16 (14 is UNAVAILABLE)".to_string(),
        _ => return format!("a whole number{}", for_parent(parent)),
    };
    format!("a whole number of {counted}")
}

/// A fractional field: thresholds take their unit from the indicator they belong to.
fn number(field: &str, parent: &str) -> String {
    let of = if matches!(field, "warning" | "critical" | "above") {
        parent
    } else {
        field
    };
    match of {
        "error_rate" => "a share between 0 and 1 (0.05 = 5%)".to_string(),
        f if f.ends_with("_ms") => "a number of milliseconds".to_string(),
        "request_rate" => "a number of requests per second".to_string(),
        "queue_depth" | "inflight" => "a number of requests".to_string(),
        "limits_multiplier" => "a number to multiply limits by (e.g. 2 or 1.5)".to_string(),
        _ => "a number".to_string(),
    }
}

fn for_parent(parent: &str) -> String {
    if parent.is_empty() {
        String::new()
    } else {
        format!(" (in `{parent}`)")
    }
}

fn max_of(ty: &str) -> u64 {
    match ty {
        "u8" => u8::MAX.into(),
        "u16" => u16::MAX.into(),
        "u32" => u32::MAX.into(),
        _ => u64::MAX,
    }
}

/// serde's description of the value it found, as the file spells it.
fn shown(found: &str) -> String {
    if let Some(s) = found.strip_prefix("string ") {
        return s.to_string();
    }
    for kind in ["integer ", "floating point ", "boolean "] {
        if let Some(v) = found.strip_prefix(kind) {
            return v.trim_matches('`').to_string();
        }
    }
    match found {
        "sequence" => "a list".to_string(),
        "map" => "a mapping".to_string(),
        "unit value" => "nothing".to_string(),
        other => other.to_string(),
    }
}

/// Levenshtein distance over characters (small names only: O(a*b) time, O(b) memory).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The candidate `name` is most likely a misspelling of: at most 2 edits (case ignored), and
/// few for the length, so that short distinct names (`api`, `app`) are not taken for typos.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2 && d * 4 <= lower.chars().count().max(c.chars().count()))
        .min()
        .map(|(_, c)| c)
}

/// The five fields of a cron expression with the values each takes.
const CRON_FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT (0 and 7 are Sunday)"),
];

/// Which field of a 5-field `expr` croner rejects, and why, found by trying each field alone
/// with `*` in the others; `None` when no single field is at fault.
pub(crate) fn cron_problem(expr: &str) -> Option<String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    for (i, value) in fields.iter().enumerate() {
        let (name, range) = CRON_FIELDS.get(i)?;
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *value } else { "*" })
            .collect();
        if let Err(e) = alone.join(" ").parse::<croner::Cron>() {
            let why = if e.to_string().contains("out of bounds") {
                format!("must be {range}")
            } else {
                format!("not a value, range (8-18), step (*/2) or list (8,12) of {range}")
            };
            return Some(format!("field {} ({name}) is \"{value}\": {why}", i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("recomendations", "recommendations"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn closest_takes_typos_not_other_short_names() {
        let known = ["recommendations", "search", "api"];
        assert_eq!(closest("recomendations", known), Some("recommendations"));
        assert_eq!(closest("Search", known), Some("search"));
        assert_eq!(closest("serch", known), Some("search"));
        assert_eq!(closest("app", known), None);
        assert_eq!(closest("analytics", known), None);
        assert_eq!(closest("search", known), None);
    }

    #[test]
    fn type_errors_name_the_unit() {
        let t = |p, m| type_error(p, m).unwrap();
        assert_eq!(
            t(
                "limits[0].window_seconds",
                "invalid type: string \"1s\", expected u64"
            ),
            "expected a whole number of seconds, got \"1s\""
        );
        assert_eq!(
            t(
                "server.threads",
                "invalid value: integer `-1`, expected usize"
            ),
            "expected a whole number of threads, 0 or more, got -1"
        );
        assert_eq!(
            t(
                "load_indicators.latency_p95_ms.warning",
                "invalid type: string \"1s\", expected f64"
            ),
            "expected a number of milliseconds, got \"1s\""
        );
        assert_eq!(type_error("x", "unknown variant `a`, expected `b`"), None);
    }

    #[test]
    fn cron_problem_names_field_and_position() {
        assert_eq!(
            cron_problem("0 25 * * 1-5").as_deref(),
            Some("field 2 (hour) is \"25\": must be 0-23")
        );
        assert_eq!(cron_problem("0 8 * * 1-5"), None);
    }
}
