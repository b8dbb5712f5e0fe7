//! Overrides as scripts read them. The proto carries an override's value in words
//! (`max_requests 2000 per 60 s`); until it carries typed fields, they are parsed here from
//! those words, under the names the proto would give them, so JSON and YAML readers get
//! `"max_requests": 2000` now and the same shape later.

use floodgate_admin::pb;
use serde::Serialize;

/// One override: the proto's fields, then the typed ones its value holds.
#[derive(Serialize)]
pub(crate) struct OverrideView<'a> {
    #[serde(flatten)]
    pub(crate) raw: &'a pb::Override,
    #[serde(flatten)]
    pub(crate) typed: Typed,
}

impl<'a> OverrideView<'a> {
    pub(crate) fn new(raw: &'a pb::Override) -> Self {
        Self {
            raw,
            typed: Typed::parse(&raw.value),
        }
    }
}

/// A change's reply with typed overrides and, after a fleet change was waited for, who
/// applied it.
#[derive(Serialize)]
pub(crate) struct ChangeView<'a> {
    pub(crate) summary: &'a str,
    pub(crate) overrides: Vec<OverrideView<'a>>,
    pub(crate) fleet_version: u64,
    pub(crate) dry_run: bool,
    pub(crate) changes: &'a [pb::KnobChange],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) applied: Option<&'a crate::fleet_wait::Applied>,
}

impl<'a> ChangeView<'a> {
    pub(crate) fn new(reply: &'a pb::ChangeReply) -> Self {
        Self {
            summary: &reply.summary,
            overrides: reply.overrides.iter().map(OverrideView::new).collect(),
            fleet_version: reply.fleet_version,
            dry_run: reply.dry_run,
            changes: &reply.changes,
            applied: None,
        }
    }
}

/// The typed fields of an override's value; those it does not hold are left out.
#[derive(Serialize, Default, Debug, PartialEq)]
pub(crate) struct Typed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) window_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_concurrency: Option<u32>,
}

impl Typed {
    /// Reads the sidecar's words: comma-separated parts, each `NAME NUMBER` (a limit's may
    /// end `per N s`) or one word (a level, enabled/disabled, on/off). Words it does not
    /// know leave the fields empty; `value` still has them.
    pub(crate) fn parse(value: &str) -> Self {
        let mut t = Typed::default();
        for part in value.split(',').map(str::trim) {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words.as_slice() {
                ["max_requests", n] => t.max_requests = n.parse().ok(),
                ["window", w, "s"] => t.window_seconds = w.parse().ok(),
                // Sidecars older than the window knob said both in one override.
                ["max_requests", n, "per", w, "s"] => {
                    t.max_requests = n.parse().ok();
                    t.window_seconds = w.parse().ok();
                }
                ["max_size", n] => t.max_size = n.parse().ok(),
                ["max_concurrency", n] => t.max_concurrency = n.parse().ok(),
                [level @ ("full" | "degraded" | "minimal")] => t.level = Some((*level).into()),
                ["enabled" | "on"] => t.enabled = Some(true),
                ["disabled" | "off"] => t.enabled = Some(false),
                _ => {}
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_the_sidecar_describes_is_typed() {
        let limit = Typed::parse("max_requests 2000 per 60 s");
        assert_eq!(
            (limit.max_requests, limit.window_seconds),
            (Some(2000), Some(60))
        );
        assert_eq!(Typed::parse("max_requests 6").max_requests, Some(6));
        assert_eq!(Typed::parse("window 30 s").window_seconds, Some(30));
        assert_eq!(Typed::parse("degraded").level.as_deref(), Some("degraded"));
        assert_eq!(Typed::parse("disabled").enabled, Some(false));
        assert_eq!(Typed::parse("on").enabled, Some(true));
        let q = Typed::parse("max_size 5000, max_concurrency 20");
        assert_eq!((q.max_size, q.max_concurrency), (Some(5000), Some(20)));
        assert_eq!(Typed::parse("something new"), Typed::default());
    }

    #[test]
    fn json_has_the_proto_fields_and_the_typed_ones() {
        let o = pb::Override {
            key: "limit:api".into(),
            value: "max_requests 2000".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(OverrideView::new(&o)).unwrap();
        assert_eq!(v["key"], "limit:api");
        assert_eq!(v["value"], "max_requests 2000");
        assert_eq!(v["max_requests"], 2000);
        assert!(v.get("window_seconds").is_none(), "{v}");
    }
}
