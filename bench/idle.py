#!/usr/bin/env python3
"""What an idle Floodgate costs: its CPU in millicores and the Redis commands it sends.

Starts its own redis-server on a free loopback port, a backend (nginx `return 200`), and
target/release/floodgate with Redis, the admin plane (an operator token file), a global limit
and the metrics port, all on free loopback ports. Optionally sends some traffic first
(--requests, HTTP/1.1 and, with --h2c, a few h2c requests too), then leaves it idle and
measures, over --seconds:

- its CPU: utime + stime of the process from /proc/PID/stat (one tick is 10 ms, so over 20 s
  the resolution is 0.5 millicore), and the sum of its threads' run time from
  /proc/PID/task/*/schedstat (nanoseconds: the precise figure);
- the Redis load it causes: `INFO commandstats` before and after, per command per second
  (the INFO calls themselves left out);
- its threads by name (pingora-timeout's clock thread is "Timer thread").

With --strace S it also runs `strace -f -c` for S seconds and prints the summary. Nothing here
is a pass/fail test: it prints what it saw.
"""
import argparse, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402  (free ports, the nginx backend)

TICK = os.sysconf("SC_CLK_TCK")


def stat_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sched_ns(pid):
    """Run time of every live thread in ns, by thread id: {tid: (name, ns)} (a thread that
    exits takes its share along)."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                out[t] = (name, int(f.read().split()[0]))
        except OSError:
            pass
    return out


def threads(pid):
    names = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                n = f.read().strip()
        except OSError:
            continue
        names[n] = names.get(n, 0) + 1
    return dict(sorted(names.items()))


def commandstats(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, timeout=10).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^cmdstat_(\S+?):calls=(\d+)", out, re.M)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20, help="idle seconds measured (default 20)")
    ap.add_argument("--settle", type=float, default=3, help="seconds left idle before measuring (default 3)")
    ap.add_argument("--requests", type=int, default=0, help="HTTP/1.1 requests sent before idling (default 0)")
    ap.add_argument("--h2c", action="store_true", help="also send 10 h2c requests before idling (needs curl)")
    ap.add_argument("--strace", type=int, default=0, help="then run strace -f -c for this many seconds")
    ap.add_argument("--no-redis", action="store_true", help="without the redis section and the global limit")
    ap.add_argument("--binary", default=B.FLOODGATE)
    args = ap.parse_args()
    if not shutil.which("redis-server") or not shutil.which("nginx"):
        raise SystemExit("needs redis-server and nginx (Debian's redis-server, nginx)")
    tmp = tempfile.mkdtemp(prefix="fg-idle-")
    procs = []
    try:
        rport, bport, port, mport, aport, h2bport, h2port = (B.free_port() for _ in range(7))
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", tmp],
                                      stdout=subprocess.DEVNULL))
        procs.append(B.nginx(tmp, "backend", 1, f'server {{ listen 127.0.0.1:{bport}; location / {{ return 200 "ok\\n"; }} }}'))
        if args.h2c:
            # An h2c backend for an h2c listener: h2c requests go to the app as h2c.
            procs.append(B.nginx(tmp, "backend-h2c", 1, f'server {{ listen 127.0.0.1:{h2bport} http2; location / {{ return 200 "ok\\n"; }} }}'))
            B.wait_port(h2bport)
        B.wait_port(rport)
        B.wait_port(bport)
        with open(os.path.join(tmp, "op.token"), "w") as f:
            f.write("idle-operator-token\n")
        redis = "" if args.no_redis else f"""redis: {{ url: "redis://127.0.0.1:{rport}", expected_replicas: 1 }}
limits:
  - name: idle
    key: [client_ip]
    max_requests: 1000000000
    window_seconds: 60
    scope: global
"""
        conf = os.path.join(tmp, "floodgate.yaml")
        with open(conf, "w") as f:
            f.write((f"""listeners:
  - {{ name: http, listen: "127.0.0.1:{port}", upstream: {{ address: "127.0.0.1:{bport}" }} }}
  - {{ name: grpc, listen: "127.0.0.1:{h2port}", upstream: {{ address: "127.0.0.1:{h2bport}" }} }}
""" if args.h2c else f"""listen: 127.0.0.1:{port}
upstream: {{ address: 127.0.0.1:{bport} }}
""") + f"""metrics: {{ listen: 127.0.0.1:{mport} }}
admin:
  listen: 127.0.0.1:{aport}
  tokens:
    - {{ file: {tmp}/op.token, role: operator }}
logging: {{ access_log: false }}
server: {{ threads: 1 }}
{redis}""")
        fg = subprocess.Popen([args.binary, "--config", conf], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "floodgate.log"), "w"))
        procs.append(fg)
        end = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.time() > end or fg.poll() is not None:
                raise SystemExit(f"floodgate not ready; its log: {tmp}/floodgate.log")
            time.sleep(0.05)
        for _ in range(args.requests):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
        if args.h2c:
            for _ in range(10):  # one connection each
                subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge",
                                f"http://127.0.0.1:{h2port}/"], check=True, timeout=30)
        time.sleep(args.settle)
        r0, s0, n0, t0 = commandstats(rport), stat_seconds(fg.pid), sched_ns(fg.pid), time.monotonic()
        time.sleep(args.seconds)
        r1, s1, n1, t1 = commandstats(rport), stat_seconds(fg.pid), sched_ns(fg.pid), time.monotonic()
        secs = t1 - t0
        print(f"floodgate idle over {secs:.1f} s after {args.requests} request(s){' + 10 h2c' if args.h2c else ''}"
              f"{'' if args.no_redis else ', with redis, admin, a global limit and metrics'}:")
        print(f"  utime+stime: {(s1 - s0) / secs * 1000:.2f} millicores (resolution {1000 / TICK / secs:.2f})")
        by_name = {}
        for t, (name, ns) in n1.items():
            by_name[name] = by_name.get(name, 0) + ns - n0.get(t, (name, 0))[1]
        print(f"  threads' run time (schedstat): {sum(by_name.values()) / secs / 1e6:.3f} millicores: "
              + ", ".join(f"{k} {v / secs / 1e6:.3f}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v))
        print(f"  threads: {threads(fg.pid)}")
        calls = {k: r1.get(k, 0) - r0.get(k, 0) for k in r1 if k != "info"}
        calls = {k: v for k, v in calls.items() if v}
        total = sum(calls.values())
        print(f"  redis: {total / secs:.2f} commands/s "
              f"({', '.join(f'{k} {v / secs:.2f}' for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))})")
        if args.strace:
            st = subprocess.Popen(["strace", "-f", "-c", "-p", str(fg.pid)], stderr=subprocess.PIPE, text=True)
            time.sleep(args.strace)
            st.send_signal(signal.SIGINT)
            print(st.communicate(timeout=30)[1])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
