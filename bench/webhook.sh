#!/usr/bin/env bash
# The injector webhook's answer time for a typical pod: `floodgatectl inject serve` on a
# free loopback port with a certificate from `serve-cert`, N AdmissionReviews of a
# Deployment's pod (two containers' worth of fields as the API server sends them) over one
# HTTPS keep-alive connection (curl), then the webhook's own histogram from /metrics
# (server time: parse, inject, diff, encode) and curl's mean round trip. A measurement, not a
# pass/fail test.
#
# Usage: bench/webhook.sh [N]   (default 200; builds floodgatectl in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
cargo build --release -q -p floodgate-admin --bin floodgatectl
bin=target/release/floodgatectl
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" inject serve-cert --extra-name 127.0.0.1 --out-dir "$dir" >/dev/null 2>&1
"$bin" inject serve --listen 127.0.0.1:0 --cert "$dir/tls.crt" --key "$dir/tls.key" 2>"$dir/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$dir/serve.log" 2>/dev/null && break; sleep 0.05; done
addr=$(grep -o 'https://[0-9.:]*' "$dir/serve.log")
cat >"$dir/review.json" <<'JSON'
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"shop","operation":"CREATE","object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-6d9f7c-","namespace":"shop","labels":{"app":"web","pod-template-hash":"6d9f7c"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-6d9f7c","uid":"0d4c","controller":true,"blockOwnerDeletion":true}]},"spec":{"containers":[{"name":"web","image":"registry.example.com/web:1.42.0","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"metrics","containerPort":9100,"protocol":"TCP"}],"env":[{"name":"MODE","value":"production"}],"readinessProbe":{"httpGet":{"path":"/ready","port":"http","scheme":"HTTP"},"periodSeconds":5,"timeoutSeconds":1,"successThreshold":1,"failureThreshold":3},"resources":{"requests":{"cpu":"250m","memory":"256Mi"}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent","volumeMounts":[{"name":"kube-api-access","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","readOnly":true}]}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"volumes":[{"name":"kube-api-access","projected":{"defaultMode":420,"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}}]}}]}}}}
JSON
# One curl, N requests on one connection (as the API server keeps its connection).
: >"$dir/curl.cfg"
for i in $(seq "$n"); do
  [ "$i" -gt 1 ] && echo next >>"$dir/curl.cfg"
  printf 'cacert = "%s"\nurl = "%s/mutate"\nrequest = POST\nheader = "Content-Type: application/json"\ndata-binary = "@%s"\noutput = /dev/null\nwrite-out = "%%{time_total}\\n"\n' "$dir/tls.crt" "$addr" "$dir/review.json" >>"$dir/curl.cfg"
done
curl -s --config "$dir/curl.cfg" >"$dir/times"
metrics=$(curl -s --cacert "$dir/tls.crt" "$addr/metrics")
sum=$(awk '/^floodgate_injector_review_duration_seconds_sum/ {print $2}' <<<"$metrics")
count=$(awk '/^floodgate_injector_review_duration_seconds_count/ {print $2}' <<<"$metrics")
injected=$(awk '/^floodgate_injector_pods_injected_total/ {print $2}' <<<"$metrics")
echo "reviews: $count (injected $injected)"
awk -v s="$sum" -v c="$count" 'BEGIN { printf "webhook answer (server side, mean): %.3f ms\n", 1000 * s / c }'
sort -n "$dir/times" | awk '{ t[NR] = $1; s += $1 } END {
  printf "round trip over HTTPS keep-alive (curl): mean %.3f ms, median %.3f ms, p99 %.3f ms (the first includes the TLS handshake)\n",
    1000 * s / NR, 1000 * t[int(NR / 2) + 1], 1000 * t[int(NR * 0.99)] }'
