#!/usr/bin/env python3
"""Writes deploy/grafana/floodgate.json, the Floodgate dashboard, from the panel list below.

The runbook's panels (request rate, p95, error rate, pod count vs desired, HPA replicas) are its
queries made right for many series: rates summed per pod before dividing (the runbook's error
rate divides each 5xx series by itself: 100% whatever the traffic), buckets summed by `le`
before the quantile, and every query limited to the `$namespace` selected. The rest are
Floodgate's own series. Run it after editing the list; tests/e2e/deploy.rs checks the JSON is
current and evaluates every query with promtool against the synthetic series and answers of
floodgate.test.yaml (a new or changed query needs its answer there).
"""
import json
import os

# (title, unit, [(legend, expr)], kind)
PANELS = [
    ("Request rate (runbook)", "reqps", [("{{pod}}", 'sum by (namespace, pod) (rate(http_requests_total{namespace=~"$namespace"}[5m]))')], "timeseries"),
    ("Latency p50 / p95 / p99", "s", [
        ("p50", 'histogram_quantile(0.50, sum by (le) (rate(http_request_duration_seconds_bucket{namespace=~"$namespace"}[5m])))'),
        ("p95 (runbook)", 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{namespace=~"$namespace"}[5m])))'),
        ("p99", 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{namespace=~"$namespace"}[5m])))'),
    ], "timeseries"),
    # 5xx share per pod (0 for a pod with no 5xx series yet, not a missing line), and over the
    # namespace as the FloodgateErrorRate alerts compute it.
    ("Error rate (runbook)", "percentunit", [
        ("{{pod}}", '(sum by (namespace, pod) (rate(http_requests_total{namespace=~"$namespace",status=~"5.."}[5m])) or 0 * sum by (namespace, pod) (rate(http_requests_total{namespace=~"$namespace"}[5m]))) / sum by (namespace, pod) (rate(http_requests_total{namespace=~"$namespace"}[5m]))'),
        ("all pods {{namespace}}", '(sum by (namespace) (rate(http_requests_total{namespace=~"$namespace",status=~"5.."}[5m])) or 0 * sum by (namespace) (rate(http_requests_total{namespace=~"$namespace"}[5m]))) / sum by (namespace) (rate(http_requests_total{namespace=~"$namespace"}[5m]))'),
    ], "timeseries"),
    ("Queue depth / capacity", "short", [
        ("depth {{pod}}", 'floodgate_queue_depth{namespace=~"$namespace"}'),
        ("capacity {{pod}}", 'floodgate_queue_capacity{namespace=~"$namespace"}'),
    ], "timeseries"),
    ("In flight / workers", "short", [
        ("in flight {{pod}}", 'floodgate_inflight_requests{namespace=~"$namespace"}'),
        ("workers {{pod}}", 'floodgate_concurrency_limit{namespace=~"$namespace"}'),
    ], "timeseries"),
    ("Pod count vs desired (runbook)", "short", [
        ("replicas {{namespace}}", 'kube_deployment_status_replicas{namespace=~"$namespace",deployment="$deployment"}'),
        ("desired {{namespace}}", 'kube_deployment_spec_replicas{namespace=~"$namespace",deployment="$deployment"}'),
    ], "timeseries"),
    # kube-state-metrics 1.x names it as the runbook does; 2.x renamed it.
    ("HPA replicas (runbook)", "short", [("current {{namespace}}", 'kube_hpa_status_current_replicas{namespace=~"$namespace",hpa="$deployment"} or kube_horizontalpodautoscaler_status_current_replicas{namespace=~"$namespace",horizontalpodautoscaler="$deployment"}')], "timeseries"),
    ("Rate-limit utilisation", "percentunit", [("{{limit}} {{pod}}", 'floodgate_ratelimit_utilization_ratio{namespace=~"$namespace"}')], "timeseries"),
    ("Refusals by reason", "reqps", [("{{reason}}", 'sum by (reason) (rate(floodgate_shed_total{namespace=~"$namespace"}[5m]))')], "timeseries"),
    ("Degradation level (0 full, 1 degraded, 2 minimal)", "short", [("{{pod}}", 'floodgate_degradation_level{namespace=~"$namespace"}')], "timeseries"),
    ("Features on", "short", [("{{feature}}", 'min by (feature) (floodgate_feature_enabled{namespace=~"$namespace"})')], "timeseries"),
    ("Circuit breakers (0 closed, 1 half-open, 2 open)", "short", [("{{upstream}} {{pod}}", 'floodgate_circuit_breaker_state{namespace=~"$namespace"}')], "timeseries"),
    ("Redis: limits decided locally, errors", "short", [
        ("local fallback {{limit}}", 'sum by (limit) (floodgate_ratelimit_backend{namespace=~"$namespace",mode="local_fallback"})'),
        ("errors {{kind}}", 'sum by (kind) (rate(floodgate_redis_errors_total{namespace=~"$namespace"}[5m]))'),
    ], "timeseries"),
    ("Fleet override version applied", "short", [("{{pod}}", 'floodgate_fleet_override_version{namespace=~"$namespace"}')], "timeseries"),
    ("Load indicators at warning or critical", "short", [("{{indicator}} {{level}}", 'sum by (indicator, level) (floodgate_load_indicator{namespace=~"$namespace",level!="ok"})')], "timeseries"),
]


def dashboard():
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": kind,
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                for j, (legend, expr) in enumerate(targets)
            ],
        })
    return {
        "title": "Floodgate",
        "uid": "floodgate",
        "schemaVersion": 39,
        "version": 1,
        "tags": ["floodgate", "runbook"],
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "namespace", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(floodgate_build_info, namespace)", "includeAll": True, "multi": True},
            {"name": "deployment", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": 'label_values(kube_deployment_status_replicas{namespace=~"$namespace"}, deployment)'},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floodgate.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(f"wrote {out}")
