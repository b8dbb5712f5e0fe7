//! Advice on a config that is valid: what it allows on purpose but a reader may not mean.
//! `floodgate validate` and `floodgatectl config validate` print these after `ok`, and the
//! sidecar logs them at start; none stops anything.

use std::collections::BTreeSet;

use crate::Config;

/// One line per thing worth a second look, each naming the field and what to do.
pub fn notes(cfg: &Config) -> Vec<String> {
    let on_routes: BTreeSet<&str> = cfg
        .routes
        .iter()
        .filter_map(|r| r.feature.as_deref())
        .collect();
    let d = &cfg.degradation;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (level, names) in [("degraded", &d.degraded), ("minimal", &d.minimal)] {
        for (i, feature) in names.iter().enumerate() {
            if on_routes.contains(feature.as_str()) || !seen.insert(feature.as_str()) {
                continue;
            }
            out.push(format!(
                "degradation.levels.{level}[{i}]: feature `{feature}` is on no route, so at this \
                 level the sidecar only tells the app (in the disabled-features header) and \
                 answers none of its requests itself; give a route `feature: {feature}` if it \
                 should, or check the spelling"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_feature_no_route_has_is_noted_once_naming_where() {
        let cfg = crate::parse(
            "listen: 127.0.0.1:8080\nupstream: { address: 127.0.0.1:3000 }\nroutes:\n  - { name: reco, match: { path_prefix: /reco }, feature: recommendations }\ndegradation:\n  levels: { degraded: [recommendations, analytics], minimal: [recommendations, analytics, search] }\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let n = notes(&cfg);
        assert_eq!(n.len(), 2, "{n:?}");
        assert!(
            n[0].starts_with("degradation.levels.degraded[1]: feature `analytics` is on no route"),
            "{n:?}"
        );
        assert!(
            n[1].starts_with("degradation.levels.minimal[2]: feature `search`"),
            "{n:?}"
        );
    }
}
