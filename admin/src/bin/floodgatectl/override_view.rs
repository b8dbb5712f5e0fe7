//! Overrides as scripts read them: the proto's fields, the value typed among them
//! (`"max_requests": 2000`). A sidecar older than the typed fields sends the value only in
//! words (`max_requests 2000 per 60 s`); for it the same fields are parsed from the words,
//! so a script reads one shape from every version.

use floodgate_admin::pb;
use serde::Serialize;

/// One override: the proto's fields (the typed value among them), or for an older sidecar
/// the typed fields parsed from its words.
#[derive(Serialize)]
pub(crate) struct OverrideView<'a> {
    #[serde(flatten)]
    pub(crate) raw: &'a pb::Override,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) parsed: Option<Typed>,
}

impl<'a> OverrideView<'a> {
    pub(crate) fn new(raw: &'a pb::Override) -> Self {
        let typed = raw.max_requests.is_some()
            || raw.window_seconds.is_some()
            || raw.level.is_some()
            || raw.enabled.is_some()
            || raw.max_size.is_some()
            || raw.max_concurrency.is_some()
            || raw.open.is_some();
        Self {
            raw,
            parsed: (!typed).then(|| Typed::parse(&raw.value)),
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

/// The typed fields of an older sidecar's override value, parsed from its words; those it
/// does not hold are left out.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) open: Option<bool>,
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
                ["forced", "open"] => t.open = Some(true),
                ["forced", "closed"] => t.open = Some(false),
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
        assert_eq!(Typed::parse("forced closed").open, Some(false));
        let q = Typed::parse("max_size 5000, max_concurrency 20");
        assert_eq!((q.max_size, q.max_concurrency), (Some(5000), Some(20)));
        assert_eq!(Typed::parse("something new"), Typed::default());
    }

    #[test]
    fn json_has_the_proto_fields_and_the_typed_ones() {
        let o = pb::Override {
            key: "limit:api".into(),
            value: "max_requests 2000".into(),
            max_requests: Some(2000),
            ..Default::default()
        };
        let v = serde_json::to_value(OverrideView::new(&o)).unwrap();
        assert_eq!(v["key"], "limit:api");
        assert_eq!(v["value"], "max_requests 2000");
        assert_eq!(v["max_requests"], 2000);
        assert!(v.get("window_seconds").is_none(), "{v}");
        assert!(v.get("open").is_none(), "{v}");
    }

    #[test]
    fn an_older_sidecars_words_give_the_same_json() {
        let old = pb::Override {
            key: "limit:api".into(),
            value: "max_requests 2000".into(),
            ..Default::default()
        };
        let new = pb::Override {
            max_requests: Some(2000),
            ..old.clone()
        };
        assert_eq!(
            serde_json::to_value(OverrideView::new(&old)).unwrap(),
            serde_json::to_value(OverrideView::new(&new)).unwrap()
        );
    }
}
