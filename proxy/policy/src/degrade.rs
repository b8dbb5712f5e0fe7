//! Graceful degradation's decisions: which features are off (the level's list, then the
//! file's flag overrides, then the operator's), which level is in force (an operator's manual
//! level, else the higher of the file's baseline and the automatic one), and the automatic
//! controller: a rule must hold for its sustain time before the level rises, and every rule's
//! indicator must stay calm (at or below its warning threshold) for the cool-down before it
//! steps back down one level, so a single spike changes nothing and nothing flaps.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use floodgate_config::{AutoDegradation, Degradation, Indicator, Level, LoadIndicators, Trigger};

use crate::load::Reading;

/// Why the level is what it is; the `cause` label of the transitions metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The config file's `degradation.level`.
    Config,
    /// An operator's manual level.
    Manual,
    /// An automatic rule fired.
    Auto,
    /// The automatic level stepped down after the cool-down.
    Recovered,
}

impl Cause {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Config => "config",
            Cause::Manual => "manual",
            Cause::Auto => "auto",
            Cause::Recovered => "recovered",
        }
    }
}

/// Numeric value of `floodgate_degradation_level`: 0 full, 1 degraded, 2 minimal.
pub fn level_gauge(l: Level) -> i64 {
    match l {
        Level::Full => 0,
        Level::Degraded => 1,
        Level::Minimal => 2,
    }
}

/// The features off at `level`, after the file's and then the operator's flag overrides.
pub fn disabled_features(
    cfg: &Degradation,
    level: Level,
    operator: &BTreeMap<String, bool>,
) -> BTreeSet<String> {
    let mut off: BTreeSet<String> = match level {
        Level::Full => BTreeSet::new(),
        Level::Degraded => cfg.degraded.iter().cloned().collect(),
        Level::Minimal => cfg.minimal.iter().cloned().collect(),
    };
    for (feature, &enabled) in cfg.features.iter().chain(operator.iter()) {
        if enabled {
            off.remove(feature);
        } else {
            off.insert(feature.clone());
        }
    }
    off
}

/// A change of the automatic level.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoChange {
    /// Before.
    pub from: Level,
    /// After.
    pub to: Level,
    /// Rising ([`Cause::Auto`]) or stepping down ([`Cause::Recovered`]).
    pub cause: Cause,
    /// What happened, for the log: the rule that fired, or the calm that ended it.
    pub why: String,
}

/// The automatic degradation controller. Driven once a second with the load indicators.
#[derive(Debug)]
pub struct AutoController {
    cfg: AutoDegradation,
    /// Per rule, since when its condition has held.
    held_since: Vec<Option<Duration>>,
    /// Since when every rule has been calm (while above `full`).
    calm_since: Option<Duration>,
    level: Level,
}

impl AutoController {
    /// A controller at `full`.
    pub fn new(cfg: AutoDegradation) -> Self {
        Self {
            held_since: vec![None; cfg.rules.len()],
            cfg,
            calm_since: None,
            level: Level::Full,
        }
    }

    /// New settings (reload). Unchanged rules keep their timers; switching it off returns to
    /// `full` (reported by the next [`AutoController::evaluate`]).
    pub fn configure(&mut self, cfg: AutoDegradation) {
        if cfg.rules != self.cfg.rules {
            self.held_since = vec![None; cfg.rules.len()];
        }
        self.cfg = cfg;
    }

    /// The automatic level now.
    pub fn level(&self) -> Level {
        self.level
    }

    /// One look at the indicators at `now`. Returns the change it makes, if any.
    pub fn evaluate(
        &mut self,
        now: Duration,
        readings: &[Reading],
        breaker_open: bool,
        indicators: &LoadIndicators,
    ) -> Option<AutoChange> {
        if !self.cfg.enabled {
            self.held_since.iter_mut().for_each(|h| *h = None);
            self.calm_since = None;
            return (self.level != Level::Full).then(|| {
                let from = std::mem::replace(&mut self.level, Level::Full);
                AutoChange {
                    from,
                    to: Level::Full,
                    cause: Cause::Recovered,
                    why: "automatic degradation switched off".into(),
                }
            });
        }
        // An indicator with too few samples to judge neither triggers a rule nor keeps one
        // from calming down: there is no evidence of load either way.
        let value = |i: Indicator| {
            readings
                .iter()
                .find(|r| r.indicator == i)
                .map_or(Some(0.0), |r| r.judged.then_some(r.value))
        };
        let mut wanted = Level::Full;
        let mut why = String::new();
        let mut calm = true;
        for (rule, since) in self.cfg.rules.iter().zip(self.held_since.iter_mut()) {
            let (holds, rule_calm, what) = match rule.trigger {
                Trigger::Above(i, above) => {
                    let Some(v) = value(i) else {
                        *since = None;
                        continue;
                    };
                    // Calm means back at or below the warning line (or the rule's own line,
                    // whichever is lower): hysteresis between entering and leaving.
                    let calm_line = indicators
                        .thresholds(i)
                        .warning
                        .map_or(above, |w| w.min(above));
                    (
                        v > above,
                        v <= calm_line,
                        format!("{} = {v:.3} > {above}", i.as_str()),
                    )
                }
                Trigger::BreakerOpen => {
                    (breaker_open, !breaker_open, "circuit breaker open".into())
                }
            };
            calm &= rule_calm;
            if !holds {
                *since = None;
                continue;
            }
            let start = *since.get_or_insert(now);
            if now.saturating_sub(start) >= rule.sustain && rule.level > wanted {
                wanted = rule.level;
                why = format!("{what} for {} s", rule.sustain.as_secs());
            }
        }
        if wanted > self.level {
            let from = std::mem::replace(&mut self.level, wanted);
            self.calm_since = None;
            return Some(AutoChange {
                from,
                to: wanted,
                cause: Cause::Auto,
                why,
            });
        }
        if self.level == Level::Full || !calm {
            self.calm_since = None;
            return None;
        }
        let start = *self.calm_since.get_or_insert(now);
        if now.saturating_sub(start) < self.cfg.cooldown {
            return None;
        }
        let from = self.level;
        self.level = match from {
            Level::Minimal => Level::Degraded,
            _ => Level::Full,
        };
        // The next step down waits a whole cool-down of its own.
        self.calm_since = Some(now);
        Some(AutoChange {
            from,
            to: self.level,
            cause: Cause::Recovered,
            why: format!("every rule calm for {} s", self.cfg.cooldown.as_secs()),
        })
    }
}

/// The level in force: a manual level wins; otherwise the higher of baseline and automatic.
pub fn effective_level(baseline: Level, manual: Option<Level>, auto: Level) -> Level {
    manual.unwrap_or(baseline.max(auto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Level as Alarm;
    use floodgate_config::{AutoRule, Thresholds};

    fn cfg() -> Degradation {
        Degradation {
            degraded: vec!["reco".into(), "analytics".into()],
            minimal: vec!["reco".into(), "analytics".into(), "search".into()],
            ..Degradation::default()
        }
    }

    fn reading(i: Indicator, value: f64) -> Reading {
        Reading {
            indicator: i,
            value,
            thresholds: Thresholds::default(),
            level: Alarm::Ok,
            judged: true,
        }
    }

    #[test]
    fn levels_then_file_flags_then_operator_flags() {
        let mut c = cfg();
        let none = BTreeMap::new();
        assert!(disabled_features(&c, Level::Full, &none).is_empty());
        assert_eq!(
            disabled_features(&c, Level::Degraded, &none),
            BTreeSet::from(["analytics".to_string(), "reco".to_string()])
        );
        c.features.insert("analytics".into(), true);
        c.features.insert("notifications".into(), false);
        assert_eq!(
            disabled_features(&c, Level::Degraded, &none),
            BTreeSet::from(["notifications".to_string(), "reco".to_string()])
        );
        let operator = BTreeMap::from([("reco".to_string(), true), ("search".to_string(), false)]);
        assert_eq!(
            disabled_features(&c, Level::Full, &operator),
            BTreeSet::from(["notifications".to_string(), "search".to_string()])
        );
    }

    #[test]
    fn manual_wins_then_the_higher_of_baseline_and_auto() {
        assert_eq!(
            effective_level(Level::Full, None, Level::Degraded),
            Level::Degraded
        );
        assert_eq!(
            effective_level(Level::Minimal, None, Level::Degraded),
            Level::Minimal
        );
        assert_eq!(
            effective_level(Level::Full, Some(Level::Full), Level::Minimal),
            Level::Full
        );
    }

    fn controller() -> AutoController {
        AutoController::new(AutoDegradation {
            enabled: true,
            cooldown: Duration::from_secs(30),
            rules: vec![
                AutoRule {
                    trigger: Trigger::Above(Indicator::LatencyP95Ms, 2000.0),
                    sustain: Duration::from_secs(10),
                    level: Level::Degraded,
                },
                AutoRule {
                    trigger: Trigger::BreakerOpen,
                    sustain: Duration::from_secs(5),
                    level: Level::Minimal,
                },
            ],
        })
    }

    fn run(
        c: &mut AutoController,
        from: u64,
        to: u64,
        p95: f64,
        breaker: bool,
    ) -> Vec<(u64, AutoChange)> {
        let ind = LoadIndicators::default(); // p95 warning 1000
        (from..to)
            .filter_map(|s| {
                c.evaluate(
                    Duration::from_secs(s),
                    &[reading(Indicator::LatencyP95Ms, p95)],
                    breaker,
                    &ind,
                )
                .map(|ch| (s, ch))
            })
            .collect()
    }

    #[test]
    fn a_spike_shorter_than_the_sustain_time_changes_nothing() {
        let mut c = controller();
        assert!(run(&mut c, 0, 9, 5000.0, false).is_empty());
        assert!(run(&mut c, 9, 30, 100.0, false).is_empty());
        assert_eq!(c.level(), Level::Full);
    }

    #[test]
    fn sustained_load_degrades_and_recovery_waits_for_a_calm_cool_down() {
        let mut c = controller();
        let up = run(&mut c, 0, 20, 2500.0, false);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].0, 10, "after 10 s above the line");
        assert_eq!((up[0].1.to, up[0].1.cause), (Level::Degraded, Cause::Auto));
        assert!(up[0].1.why.contains("latency_p95_ms"), "{}", up[0].1.why);
        // Below the rule's 2000 but above the 1000 warning line: not calm, stays degraded.
        assert!(run(&mut c, 20, 100, 1500.0, false).is_empty());
        // Calm: back to full after exactly the 30 s cool-down.
        let down = run(&mut c, 100, 200, 500.0, false);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].0, 130);
        assert_eq!(
            (down[0].1.to, down[0].1.cause),
            (Level::Full, Cause::Recovered)
        );
    }

    #[test]
    fn an_indicator_too_thin_to_judge_never_triggers_a_rule() {
        let mut c = controller();
        let ind = LoadIndicators::default();
        let thin = Reading {
            judged: false,
            ..reading(Indicator::LatencyP95Ms, 5000.0)
        };
        for s in 0..60 {
            assert_eq!(
                c.evaluate(Duration::from_secs(s), &[thin], false, &ind),
                None
            );
        }
        // Nor does it hold a degraded level up: without a sample there is no sign of load.
        run(&mut c, 60, 71, 2500.0, false);
        assert_eq!(c.level(), Level::Degraded);
        let down: Vec<u64> = (71..200)
            .filter_map(|s| {
                c.evaluate(Duration::from_secs(s), &[thin], false, &ind)
                    .map(|_| s)
            })
            .collect();
        assert_eq!(down, [101], "the 30 s cool-down, as if calm");
    }

    #[test]
    fn a_relapse_during_the_cool_down_restarts_it() {
        let mut c = controller();
        run(&mut c, 0, 11, 2500.0, false);
        assert_eq!(c.level(), Level::Degraded);
        assert!(run(&mut c, 11, 31, 500.0, false).is_empty());
        assert!(run(&mut c, 31, 32, 1500.0, false).is_empty());
        let down = run(&mut c, 32, 100, 500.0, false);
        assert_eq!(down[0].0, 62, "a fresh 30 s from the relapse");
    }

    #[test]
    fn the_higher_rule_wins_and_recovery_steps_one_level_at_a_time() {
        let mut c = controller();
        let up = run(&mut c, 0, 12, 2500.0, true);
        let levels: Vec<(u64, Level)> = up.iter().map(|(s, ch)| (*s, ch.to)).collect();
        assert_eq!(levels, [(5, Level::Minimal)]);
        let down = run(&mut c, 12, 100, 100.0, false);
        let levels: Vec<(u64, Level)> = down.iter().map(|(s, ch)| (*s, ch.to)).collect();
        assert_eq!(levels, [(42, Level::Degraded), (72, Level::Full)]);
    }

    #[test]
    fn switching_it_off_returns_to_full() {
        let mut c = controller();
        run(&mut c, 0, 11, 2500.0, false);
        let mut off = c.cfg.clone();
        off.enabled = false;
        c.configure(off);
        let ch = run(&mut c, 11, 12, 2500.0, false);
        assert_eq!(ch[0].1.to, Level::Full);
    }
}
