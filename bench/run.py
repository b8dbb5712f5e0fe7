#!/usr/bin/env python3
"""Throughput, latency and memory of Floodgate against nginx proxy_pass, from one run.

Everything listens on free loopback ports. Backend: nginx `return 200 "ok\\n"` (1 worker,
access log off). Candidates: nginx proxy_pass (keepalive 64, HTTP/1.1) and floodgate, both in
front of that backend, measured alternately for several rounds; the median is reported.
Load: wrk -t1 -c32 for saturation, then oha at a fixed rate of 50% of nginx's saturated rps
for the latency-under-load comparison. Every run is bounded in time.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOODGATE = os.path.join(ROOT, "target", "release", "floodgate")


# One-worker mode pins every proxy under test to the last core and the load generator, the
# backend and Redis to the first, so each candidate gets the same CPU to itself. Unpinned,
# where the scheduler happened to put each process skewed whole runs by ±30% (same binary,
# same config, different process).
PIN = {"proxy": None, "load": None}


def pinned(role, argv):
    cpu = PIN[role]
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listening on {port} after {timeout}s")


def nginx(tmp, name, workers, server_block):
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {server_block}
}}
""")
    role = "load" if name.startswith("backend") else "proxy"
    return subprocess.Popen(pinned(role, ["nginx", "-c", conf, "-p", tmp]), stderr=subprocess.DEVNULL)


LIMIT = """limits:
  - name: bench
    key: [client_ip]
    max_requests: 1000000000
    window_seconds: 60
"""


# Admission queue wider than the load's 32 connections (never saturated) and a breaker that
# never opens (the backend never fails): prices the queue and breaker bookkeeping.
QUEUE = """queue: { max_concurrency: 64, max_size: 1000, timeout_ms: 2000 }
circuit_breaker: { consecutive_failures: 5, open_ms: 10000 }
"""


# Every request's feature is off: answered by its static fallback without the backend.
FALLBACK = """degradation:
  level: degraded
  levels: { degraded: [bench] }
  fallbacks:
    bench: { status: 200, body: "ok\\n", content_type: text/plain }
"""


def global_limit(redis_port):
    return f"""redis: {{ url: "redis://127.0.0.1:{redis_port}", expected_replicas: 1 }}
limits:
  - name: bench
    key: [client_ip]
    max_requests: 1000000000
    window_seconds: 60
    scope: global
"""


def floodgate(tmp, name, port, backend, threads, access_log, extra="", feature=None):
    conf = floodgate_config(tmp, name, port, backend, threads, access_log, extra, feature)
    return subprocess.Popen(pinned("proxy", [FLOODGATE, "--config", conf]),
                            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def floodgate_config(tmp, name, port, backend, threads, access_log, extra="", feature=None):
    """Writes a candidate's config file and returns its path."""
    conf = os.path.join(tmp, f"{name}.yaml")
    # A catch-all route in `feature`, for the degraded-answer candidate.
    feature_route = (f"  - name: all\n    match: {{ path_prefix: / }}\n    feature: {feature}\n"
                     if feature else "")
    with open(conf, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
upstream: {{ address: 127.0.0.1:{backend} }}
metrics: {{ listen: 127.0.0.1:{free_port()} }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
{feature_route}logging: {{ access_log: {str(access_log).lower()} }}
server: {{ threads: {threads} }}
{extra}""")
    return conf


def to_ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(port, duration, conns, script=None):
    """wrk's (rps, p50 ms, p99 ms); `script`: a wrk Lua script (say, one that varies the path)."""
    with_script = ["-s", script] if script else []
    out = subprocess.run(
        pinned("load", ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", *with_script,
                        f"http://127.0.0.1:{port}/"]),
        capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"port {port} answered {errors.group(1)} non-2xx responses:\n{out}")
    return rps, p50, p99


def oha(port, rate, duration, conns, *extra, path="/"):
    """oha's JSON report of `duration` s at a fixed `rate` (latency from each request's due time);
    `path` may be a `--rand-regex-url` pattern, given that flag in `extra`."""
    out = subprocess.run(
        pinned("load", ["oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-c", str(conns),
         "-q", str(int(rate)), "--latency-correction", *extra, f"http://127.0.0.1:{port}{path}"]),
        capture_output=True, text=True, timeout=duration + 30).stdout
    return json.loads(out)


def oha_rate(port, rate, duration, conns):
    j = oha(port, rate, duration, conns)
    pct = j["latencyPercentiles"]
    return j["summary"]["requestsPerSec"], pct["p50"] * 1000, pct["p99"] * 1000


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_mode(tmp, workers, args, label):
    procs = []
    try:
        bp, np_, fp, fpl = free_port(), free_port(), free_port(), free_port()
        nlp, fpk, fpg, rp = free_port(), free_port(), free_port(), free_port()
        fpq, fpd = free_port(), free_port()
        procs.append(subprocess.Popen(pinned("load", ["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"]), stdout=subprocess.DEVNULL))
        procs.append(nginx(tmp, f"backend{workers}", 1,
                           f'server {{ listen 127.0.0.1:{bp}; location / {{ return 200 "ok\\n"; }} }}'))
        procs.append(nginx(tmp, f"proxy{workers}", workers, f"""
  upstream backend {{ server 127.0.0.1:{bp}; keepalive 64; }}
  server {{ listen 127.0.0.1:{np_};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""))
        # The same proxy with a per-client limit_req that never rejects, to price the check.
        procs.append(nginx(tmp, f"proxylimit{workers}", workers, f"""
  limit_req_zone $binary_remote_addr zone=perclient:10m rate=100000000r/s;
  upstream backend {{ server 127.0.0.1:{bp}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nlp};
    location / {{ limit_req zone=perclient burst=100000000 nodelay;
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""))
        fg = floodgate(tmp, f"fg{workers}", fp, bp, workers, False)
        fgl = floodgate(tmp, f"fgl{workers}", fpl, bp, workers, True)
        fgk = floodgate(tmp, f"fgk{workers}", fpk, bp, workers, False, LIMIT)
        fgq = floodgate(tmp, f"fgq{workers}", fpq, bp, workers, False, QUEUE)
        fgd = floodgate(tmp, f"fgd{workers}", fpd, bp, workers, False, FALLBACK, feature="bench")
        wait_port(rp)
        fgg = floodgate(tmp, f"fgg{workers}", fpg, bp, workers, False, global_limit(rp))
        procs += [fg, fgl, fgk, fgg, fgq, fgd]
        for p in (bp, np_, fp, fpl, nlp, fpk, fpg, fpq, fpd):
            wait_port(p)
        time.sleep(0.5)
        idle_rss = rss_mib(fg.pid)
        targets = [("direct to backend", bp), ("nginx proxy_pass", np_),
                   ("floodgate", fp), ("floodgate + access log", fpl),
                   ("nginx + limit_req", nlp), ("floodgate + local limit", fpk),
                   ("floodgate + global limit (redis)", fpg),
                   ("floodgate + queue + breaker (not saturated)", fpq),
                   ("floodgate, feature off: static fallback", fpd)]
        results = {name: [] for name, _ in targets}
        for port in (np_, fp, fpl, nlp, fpk, fpg, fpq, fpd):  # warm pools, caches and the Redis connection
            wrk(port, 1, args.connections)
        for _ in range(args.rounds):
            for name, port in targets:
                results[name].append(wrk(port, args.duration, args.connections))
        med = {n: tuple(statistics.median(r[i] for r in rs) for i in range(3)) for n, rs in results.items()}
        # Costs are paired within a round: this machine's speed drifts by 10-30% over minutes,
        # so the ratio of two medians taken minutes apart can be mostly drift. Each round's own
        # ratio (its runs are seconds apart) is kept, and the median of those reported.
        def paired(name, base="floodgate"):
            ratios = [a[0] / b[0] for a, b in zip(results[name], results[base])]
            p99s = [a[2] - b[2] for a, b in zip(results[name], results[base])]
            return statistics.median(ratios), statistics.median(p99s), ratios
        loaded_rss = rss_mib(fg.pid)
        half = med["nginx proxy_pass"][0] * 0.5
        at_half = {}
        if shutil.which("oha"):
            for name, port in (("nginx proxy_pass", np_), ("floodgate", fp)):
                at_half[name] = oha_rate(port, half, args.duration, args.connections)
        costs = {n: paired(n) for n in results if n.startswith("floodgate") and n != "floodgate"}
        costs["nginx + limit_req"] = paired("nginx + limit_req", "nginx proxy_pass")
        return med, costs, at_half, half, idle_rss, loaded_rss
    finally:
        for p in procs:
            p.send_signal(signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=4, help="seconds per measurement (default 4)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is kept (default 5)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    ap.add_argument("--modes", default="1,2", help="proxy worker counts to test (default 1,2 = one worker, all cores)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.md"))
    args = ap.parse_args()
    lines = [f"# bench/run.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"{os.cpu_count()} cores; wrk -t1 -c{args.connections} -d{args.duration}s, median of {args.rounds} alternating rounds.", ""]
    cpus = os.cpu_count() or 1
    printed = 0
    for workers in [int(w) for w in args.modes.split(",")]:
        pin = workers == 1 and cpus >= 2 and shutil.which("taskset") is not None
        PIN.update(proxy=cpus - 1 if pin else None, load=0 if pin else None)
        with tempfile.TemporaryDirectory() as tmp:
            med, costs, at_half, half, idle_rss, loaded_rss = run_mode(tmp, workers, args, workers)
        ng = med["nginx proxy_pass"]
        where = (f"proxies pinned to CPU {cpus - 1}, load, backend and Redis to CPU 0" if pin
                 else "unpinned")
        lines += [f"## {workers} worker(s): nginx worker_processes {workers}, floodgate server.threads {workers}; {where}", "",
                  "| path | rps | p50 ms | p99 ms | rps / nginx |", "|---|---:|---:|---:|---:|"]
        for name, (rps, p50, p99) in med.items():
            ratio = "—" if name.startswith("direct") else f"{rps / ng[0]:.2f}"
            lines.append(f"| {name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {ratio} |")
        lines.append("")
        def cost(name, base="floodgate"):  # base: how the line names what `name` is paired with
            ratio, p99, each = costs[name]
            rounds = ", ".join(f"{r:.2f}" for r in each)
            return f"{name} / {base} = **{ratio:.2f}** (rounds: {rounds}), p99 {p99:+.3f} ms"
        lines.append("Costs, each the median of the rounds' own ratios (runs seconds apart, not minutes):")
        lines.append("")
        lines.append(f"- {cost('floodgate + local limit')}")
        lines.append(f"- {cost('nginx + limit_req', 'nginx proxy_pass')}")
        lines.append(f"- {cost('floodgate + global limit (redis)')}")
        lines.append(f"- {cost('floodgate + queue + breaker (not saturated)')}")
        lines.append(f"- {cost('floodgate + access log')}")
        lines.append(f"- degraded answer: {cost('floodgate, feature off: static fallback', 'proxied')}")
        if at_half:
            lines += ["", f"At a fixed {half:,.0f} rps (50% of nginx's saturated rate), oha, {args.connections} connections:", "",
                      "| path | achieved rps | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
            for name, (rps, p50, p99) in at_half.items():
                lines.append(f"| {name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} |")
            d = at_half["floodgate"][2] - at_half["nginx proxy_pass"][2]
            lines.append(f"\nfloodgate p99 − nginx p99 at 50% load: {d:+.3f} ms")
        lines += [f"\nfloodgate RSS: {idle_rss:.1f} MiB idle, {loaded_rss:.1f} MiB after the load.", ""]
        print("\n".join(lines[printed:]), flush=True)
        printed = len(lines)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
