//! What the webhook counts, in Prometheus text on `/metrics`: pods injected, pods let through
//! unchanged by reason, reviews refused as malformed, answer times and certificate reloads.

use floodgate_admin::inject::admission::Skip;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The webhook's series.
pub(crate) struct Metrics {
    registry: Registry,
    injected: IntCounter,
    skipped: IntCounterVec,
    malformed: IntCounter,
    seconds: Histogram,
    reloads: IntCounterVec,
}

impl Metrics {
    /// Registers every series (each label value shown from the start, at zero).
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let injected = IntCounter::new(
            "floodgate_injector_pods_injected_total",
            "Pods the webhook added the Floodgate sidecar to.",
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "floodgate_injector_pods_skipped_total",
                "Pods let through unchanged, by reason.",
            ),
            &["reason"],
        )?;
        let malformed = IntCounter::new(
            "floodgate_injector_malformed_reviews_total",
            "Requests to /mutate that were not an AdmissionReview (answered 400).",
        )?;
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "floodgate_injector_review_duration_seconds",
                "Time to answer one AdmissionReview.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "floodgate_injector_certificate_reloads_total",
                "Certificate file changes seen, by result (ok, or error: the old pair kept).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(injected.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(malformed.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        for s in Skip::ALL {
            skipped.with_label_values(&[s.as_str()]);
        }
        for r in ["ok", "error"] {
            reloads.with_label_values(&[r]);
        }
        Ok(Self {
            registry,
            injected,
            skipped,
            malformed,
            seconds,
            reloads,
        })
    }

    /// One review answered: injected (`None`) or skipped, in `seconds`.
    pub(crate) fn answered(&self, skipped: Option<Skip>, seconds: f64) {
        match skipped {
            None => self.injected.inc(),
            Some(s) => self.skipped.with_label_values(&[s.as_str()]).inc(),
        }
        self.seconds.observe(seconds);
    }

    /// One request that was not an AdmissionReview.
    pub(crate) fn malformed(&self) {
        self.malformed.inc();
    }

    /// A certificate reload, good or not.
    pub(crate) fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on a metric family without a name, which cannot be.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
