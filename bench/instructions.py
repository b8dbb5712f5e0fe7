#!/usr/bin/env python3
"""Instructions per request, under valgrind's callgrind: the steady measure on a noisy machine.

Throughput on this shared 2-core machine moves by 10-30% between runs; instruction counts do
not (the same binary, config and requests give the same count whatever else runs). Each
floodgate candidate runs under callgrind in front of the same nginx backend; after WARMUP
requests the counters are zeroed (callgrind_control -z), then N keep-alive requests on 4
connections are counted and dumped, so start-up is not in the figure. Then the global limit's
Redis script is counted the same way inside redis-server, per decision, for each strategy,
and for a sliding window's call of 5 joined decisions (the sidecar's decisions of one key
queued in one turn), divided by the 5.
The README's instruction figures come from this script.
"""
import argparse, os, re, socket, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402  (helpers: ports, nginx backend, candidate configs)

SCRIPT = os.path.join(B.ROOT, "proxy", "src", "global", "limit.lua")
REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"
FIELDS_OFF = "rate_limit_headers: { ietf: false, legacy: false }\n"


def drive(port, n, conns=4):
    """n keep-alive GETs over `conns` connections; each answer read to its end ("ok\\n")."""
    def one(k):
        s = socket.create_connection(("127.0.0.1", port))
        for _ in range(k):
            s.sendall(REQUEST)
            d = b""
            while not d.endswith(b"ok\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit(f"connection closed after {d!r}")
                d += chunk
            if not d.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer {d[:60]!r}")
        s.close()
    failed = []

    def guarded(k):
        try:
            one(k)
        except BaseException as e:  # noqa: B902 (a thread's failure must fail the run)
            failed.append(e)
    ts = [threading.Thread(target=guarded, args=(n // conns,)) for _ in range(conns)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if failed:
        # A count over requests that were never sent is no count (a run once printed 0.0k).
        raise SystemExit(f"the load failed: {failed[0]!r}")


def counted(pid, out, action):
    """Zeroes callgrind's counters in `pid`, runs `action`, dumps, returns the instructions."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    action()
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dumps = sorted((f for f in os.listdir(os.path.dirname(out)) if f.startswith(os.path.basename(out) + ".")),
                   key=lambda f: os.path.getmtime(os.path.join(os.path.dirname(out), f)))
    with open(os.path.join(os.path.dirname(out), dumps[-1])) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {dumps[-1]}")


def under_callgrind(out, argv):
    return subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="counted requests per candidate (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    ap.add_argument("--decisions", type=int, default=10000, help="counted script runs per strategy")
    ap.add_argument("--script-only", action="store_true",
                    help="count only the Redis script (a change to limit.lua); results not written")
    ap.add_argument("--keep", metavar="DIR", help="leave the callgrind profiles in DIR (for callgrind_annotate)")
    ap.add_argument("--only", metavar="WORDS",
                    help="comma-separated words: count only the floodgate candidates whose name has one "
                         "(the first, 'no limit', is always kept), and not the script; results not written")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
        bp, rp = B.free_port(), B.free_port()
        backend = B.nginx(tmp, "backend", 1, f'server {{ listen 127.0.0.1:{bp}; location / {{ return 200 "ok\\n"; }} }}')
        redis = subprocess.Popen(["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL)
        B.wait_port(bp)
        B.wait_port(rp)
        candidates = [
            ("floodgate, no limit", ""),
            ("+ local limit, response fields off", FIELDS_OFF + B.LIMIT),
            ("+ local limit, the two IETF fields on every answer",
             "rate_limit_headers: { legacy: false, on_admitted: always }\n" + B.LIMIT),
            ("+ local limit, all five fields on every answer",
             "rate_limit_headers: { on_admitted: always }\n" + B.LIMIT),
            ("+ local limit, default (fields near the limit: none here)", B.LIMIT),
            ("+ local limit, fields on rejections only", "rate_limit_headers: { on_admitted: never }\n" + B.LIMIT),
            ("+ global limit on loopback Redis, fields off", FIELDS_OFF + B.global_limit(rp)),
            ("+ global limit, approximate (synced every 100 ms), fields off",
             FIELDS_OFF + B.global_limit(rp) + "    mode: approximate\n"),
            ("+ access log", None),
        ]
        if args.script_only:
            candidates = []
        if args.only:
            words = args.only.split(",")
            candidates = candidates[:1] + [c for c in candidates[1:] if any(w in c[0] for w in words)]
        try:
            for i, (name, extra) in enumerate(candidates):
                port = B.free_port()
                conf = B.floodgate_config(tmp, f"c{i}", port, bp, 1, extra is None, extra or "")
                out = os.path.join(args.keep or tmp, f"cg.c{i}")
                p = under_callgrind(out, [B.FLOODGATE, "--config", conf])
                try:
                    B.wait_port(port, timeout=120)
                    if "scope: global" in (extra or ""):
                        # Decided in Redis, not by the fallback, before counting starts.
                        end = time.time() + 60
                        while b'mode="redis"} 1' not in metrics(conf):
                            if time.time() > end:
                                raise SystemExit("the global limit never reached Redis")
                            time.sleep(0.2)
                    drive(port, args.warmup)
                    total = counted(p.pid, out, lambda: drive(port, args.n))
                finally:
                    p.terminate()
                    p.wait(timeout=60)
                rows.append((name, total / args.n))
                print(f"{name}: {total / args.n / 1000:.1f}k", flush=True)
            script = open(SCRIPT).read()
            strategies = (("s", "sliding window", 1), ("f", "fixed window", 1), ("t", "token bucket", 1),
                          ("S", "sliding window, 5 joined decisions per call", 5))
            for kind, label, joined in () if args.only else strategies:
                port = B.free_port()
                out = os.path.join(args.keep or tmp, f"cg.redis{kind}")
                p = under_callgrind(out, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"])
                try:
                    B.wait_port(port, timeout=120)
                    sha = subprocess.run(["redis-cli", "-p", str(port), "SCRIPT", "LOAD", script],
                                         capture_output=True, text=True, check=True).stdout.strip()
                    call = ["redis-benchmark", "-p", str(port), "-P", "16", "-c", "1", "-q", "EVALSHA", sha,
                            "1", "fg:{bench:1}", kind, "1000000000", "60000"]
                    if kind.isupper():
                        call.append(f"{joined:05}")
                    subprocess.run(call[:5] + ["-n", "1000"] + call[5:], capture_output=True, check=True)
                    total = counted(p.pid, out, lambda: subprocess.run(
                        call[:5] + ["-n", str(args.decisions)] + call[5:], capture_output=True, check=True))
                finally:
                    p.terminate()
                    p.wait(timeout=60)
                # Per decision: a call of `joined` decides that many.
                rows.append((f"redis-server, one decision ({label})", total / args.decisions / joined))
                print(f"redis {label}: {total / args.decisions / joined / 1000:.1f}k per decision", flush=True)
        finally:
            for p in (backend, redis):
                p.terminate()
    if args.script_only or args.only:
        return
    base = rows[0][1]
    lines = [f"# bench/instructions.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"callgrind; {args.n} keep-alive requests on 4 connections after {args.warmup} uncounted; "
             f"{args.decisions} pipelined EVALSHA per strategy.", "",
             "| what | instructions | vs floodgate, no limit |", "|---|---:|---:|"]
    for name, per in rows:
        rel = f"{(per / base - 1) * 100:+.1f}%" if not name.startswith("redis") and per is not base else "—"
        lines.append(f"| {name} | {per / 1000:.1f}k | {rel} |")
    out = os.path.join(B.ROOT, "bench", "results", "instructions.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")


def metrics(conf):
    """The candidate's /metrics, found through its config's metrics.listen."""
    port = int(re.search(r"metrics: \{ listen: 127\.0\.0\.1:(\d+)", open(conf).read()).group(1))
    try:
        s = socket.create_connection(("127.0.0.1", port), 2)
        s.sendall(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data
    except OSError:
        return b""


if __name__ == "__main__":
    main()
