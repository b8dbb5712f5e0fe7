//! The fields of one change's audit entries, written as one JSON line each.

use std::time::{Duration, SystemTime};

use serde_json::json;

/// The fields every audit entry of one change shares.
pub(crate) struct AuditCtx<'a> {
    pub now: SystemTime,
    pub caller: &'a str,
    pub operation: &'a str,
    pub reason: &'a str,
    pub scope: &'a str,
    pub ttl: Option<Duration>,
    pub fleet_version: Option<u64>,
}

impl AuditCtx<'_> {
    /// One JSON line: `target` went from `before` to `after`.
    pub fn entry(&self, target: &str, before: &str, after: &str) -> serde_json::Value {
        let mut v = json!({
            "time": humantime::format_rfc3339_seconds(self.now).to_string(),
            "caller": self.caller,
            "operation": self.operation,
            "target": target,
            "before": before,
            "after": after,
            "reason": self.reason,
            "scope": self.scope,
        });
        if let Some(m) = v.as_object_mut() {
            if let Some(t) = self.ttl {
                m.insert("ttl_seconds".into(), t.as_secs().into());
            }
            if let Some(n) = self.fleet_version {
                m.insert("fleet_version".into(), n.into());
            }
        }
        v
    }
}
