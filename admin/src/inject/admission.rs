//! The admission webhook's answer for one Pod: an `admission.k8s.io/v1` AdmissionReview in,
//! the review with its response out, carrying the JSON Patch that `floodgatectl inject` makes
//! of the same pod (the same function does the work). It never refuses a pod: what it cannot
//! inject safely is allowed unchanged, with a warning that says why.

use base64::Engine as _;
use serde_json::{json, Value};

use super::pod::{self, Outcome as PodOutcome};
use super::yaml::{Node, Scalar};
use super::Options;

/// Why a pod was let through unchanged (the webhook's metrics label them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// `floodgate.io/inject: disabled` on the pod.
    OptedOut,
    /// It has the `floodgate` container already (a reinvocation, or injected by the CLI).
    AlreadyInjected,
    /// Injecting it would not be safe (no port, `hostNetwork`, a port clash, ...).
    Refused,
    /// The object is not a Pod.
    NotAPod,
}

impl Skip {
    /// Every reason, for metrics that show zeros.
    pub const ALL: [Skip; 4] = [
        Skip::OptedOut,
        Skip::AlreadyInjected,
        Skip::Refused,
        Skip::NotAPod,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::OptedOut => "opted_out",
            Skip::AlreadyInjected => "already_injected",
            Skip::Refused => "refused",
            Skip::NotAPod => "not_a_pod",
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview to send back (its `response` filled in).
    pub review: Value,
    /// `None`: injected; otherwise why not.
    pub skipped: Option<Skip>,
    /// The patch (empty when skipped), for callers that apply it themselves.
    pub patch: json_patch::Patch,
}

/// A request the webhook cannot answer at all (the server says 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON.
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an AdmissionReview this webhook speaks.
    #[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Shape(&'static str),
}

/// Answers the AdmissionReview in `body` with `opts` (what `floodgatectl inject` would use).
pub fn review(body: &[u8], opts: &Options) -> Result<Answer, ReviewError> {
    let review: Value = serde_json::from_slice(body)?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1") {
        return Err(ReviewError::Shape("apiVersion is not admission.k8s.io/v1"));
    }
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(ReviewError::Shape("kind is not AdmissionReview"));
    }
    let request = review
        .get("request")
        .ok_or(ReviewError::Shape("no request"))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::Shape("request.uid is missing"))?;
    let object = request
        .get("object")
        .filter(|o| o.is_object())
        .ok_or(ReviewError::Shape("request.object is not an object"))?;

    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        || (request.get("kind").is_none()
            && object.get("kind").and_then(Value::as_str) == Some("Pod"));
    let (patch, skipped, warnings) = if is_pod {
        let namespace = request.get("namespace").and_then(Value::as_str);
        decide(object, namespace, opts)
    } else {
        (
            json_patch::Patch(Vec::new()),
            Some(Skip::NotAPod),
            vec!["floodgate injector: only Pods are injected; left as it is".to_string()],
        )
    };

    let mut response = json!({ "uid": uid, "allowed": true });
    if !patch.0.is_empty() {
        let text = serde_json::to_vec(&patch)?;
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Ok(Answer {
        review: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        skipped,
        patch,
    })
}

/// The patch for one pod, why it was skipped, and the warnings for the person creating it.
fn decide(
    object: &Value,
    namespace: Option<&str>,
    opts: &Options,
) -> (json_patch::Patch, Option<Skip>, Vec<String>) {
    let none = json_patch::Patch(Vec::new());
    // What the notes call it: pods a controller creates have only a generateName.
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(|g| format!("{g}*"))
        })
        .unwrap_or_else(|| "?".into());
    let shown = match namespace {
        Some(ns) => format!("Pod {ns}/{name}"),
        None => format!("Pod {name}"),
    };
    let tidy = |s: &str| {
        s.replace("Pod/?: ", "")
            .replace(&format!("Pod/{name}: "), "")
    };

    // The object as the injector reads a document; `kind` is set if the API server left it
    // out of the object, and taken off again after.
    let mut pod = object.clone();
    let had_kind = pod.get("kind").is_some();
    if !had_kind {
        pod["kind"] = json!("Pod");
    }
    let mut node = match serde_json::to_string(&pod)
        .ok()
        .and_then(|text| Node::parse(&text).ok().flatten())
    {
        Some(n) => n,
        None => {
            return (
                none,
                Some(Skip::Refused),
                vec![format!(
                    "floodgate: {shown} not injected: its object could not be read"
                )],
            )
        }
    };
    let mut notes = Vec::new();
    match pod::inject_workload(&mut node, opts, &mut notes) {
        Err(reason) => (
            none,
            Some(Skip::Refused),
            vec![format!(
                "floodgate: {shown} not injected: {}",
                tidy(&reason)
            )],
        ),
        Ok(PodOutcome::OptedOut) => (none, Some(Skip::OptedOut), Vec::new()),
        Ok(PodOutcome::AlreadyInjected) => (none, Some(Skip::AlreadyInjected), Vec::new()),
        Ok(PodOutcome::NotAWorkload) => (none, Some(Skip::NotAPod), Vec::new()),
        Ok(PodOutcome::Injected(_)) => {
            let mut after = to_json(&node);
            if !had_kind {
                if let Some(m) = after.as_object_mut() {
                    m.remove("kind");
                }
            }
            let warnings = notes
                .iter()
                // What goes around the sidecar: a port left direct, or a Service that would
                // have to target the port by name (the webhook cannot rewrite Services).
                .filter(|n| n.contains("bypasses Floodgate") || n.contains("would bypass it"))
                .map(|n| format!("floodgate: {shown}: {}", tidy(n)))
                .collect();
            (json_patch::diff(object, &after), None, warnings)
        }
    }
}

/// A [`Node`] as JSON: plain scalars resolved as JSON would write them (numbers, booleans,
/// null), every other scalar a string.
pub fn to_json(node: &Node) -> Value {
    match node {
        Node::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v)))
                .collect(),
        ),
        Node::Seq(s) => Value::Array(s.iter().map(to_json).collect()),
        Node::Scalar(Scalar { text, plain, .. }) => {
            if !plain {
                return Value::String(text.clone());
            }
            match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" | "~" | "" => Value::Null,
                t => serde_json::from_str::<serde_json::Number>(t)
                    .map(Value::Number)
                    .unwrap_or_else(|_| Value::String(t.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
            }
        }))
        .expect("json")
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "web", "image": "web:1",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
            }]}
        })
    }

    #[test]
    fn a_pod_gets_the_patch_the_cli_would_write_and_a_second_look_gets_none() {
        let a = review(&review_of(pod()), &Options::default()).expect("answer");
        assert_eq!(a.skipped, None);
        assert_eq!(a.review["response"]["uid"], "u-1");
        assert_eq!(a.review["response"]["allowed"], true);
        assert_eq!(a.review["response"]["patchType"], "JSONPatch");
        let mut patched = pod();
        json_patch::patch(&mut patched, &a.patch).expect("applies");
        assert_eq!(patched["spec"]["initContainers"][0]["name"], "floodgate");
        assert_eq!(
            patched["spec"]["containers"][0]["ports"][0]["name"],
            "app-http"
        );
        assert_eq!(
            patched["spec"]["initContainers"][0]["ports"][0]["containerPort"], 15080,
            "numbers stay numbers"
        );
        let again = review(&review_of(patched), &Options::default()).expect("answer");
        assert_eq!(again.skipped, Some(Skip::AlreadyInjected));
        assert!(again.review["response"].get("patch").is_none());
    }

    #[test]
    fn what_cannot_be_injected_is_allowed_with_a_warning() {
        let mut p = pod();
        p["spec"]["hostNetwork"] = json!(true);
        let a = review(&review_of(p), &Options::default()).expect("answer");
        assert_eq!(a.skipped, Some(Skip::Refused));
        let r = &a.review["response"];
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none());
        let w = r["warnings"][0].as_str().expect("a warning");
        assert!(
            w.starts_with("floodgate: Pod shop/web-7d9f-* not injected: uses `hostNetwork: true`"),
            "{w}"
        );
    }

    #[test]
    fn the_opt_out_annotation_is_honoured() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"floodgate.io/inject": "disabled"});
        let a = review(&review_of(p), &Options::default()).expect("answer");
        assert_eq!(a.skipped, Some(Skip::OptedOut));
        assert!(a.patch.0.is_empty());
    }

    #[test]
    fn malformed_reviews_are_errors() {
        assert!(matches!(
            review(b"{not json", &Options::default()),
            Err(ReviewError::Json(_))
        ));
        let e = review(
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
            &Options::default(),
        )
        .expect_err("v1beta1");
        assert_eq!(
            e.to_string(),
            "not an admission.k8s.io/v1 AdmissionReview: apiVersion is not admission.k8s.io/v1"
        );
        let e = review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
            &Options::default(),
        )
        .expect_err("no object");
        assert!(
            e.to_string().ends_with("request.object is not an object"),
            "{e}"
        );
    }

    #[test]
    fn json_round_trips_through_the_tree() {
        let v = json!({"a": [1, -2, 3.5, true, null, "8080", "yes", ""], "b": {"c": "true"}});
        let node = Node::parse(&v.to_string()).expect("yaml").expect("doc");
        assert_eq!(to_json(&node), v);
    }
}
