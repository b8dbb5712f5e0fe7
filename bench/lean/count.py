#!/usr/bin/env python3
"""Instructions per request of the lean floor's modes and of nginx proxy_pass, under callgrind.

The same method as bench/instructions.py (whose helpers it uses): each candidate runs under
valgrind's callgrind in front of one nginx backend (`return 200 "ok\\n"`); after --warmup
requests the counters are zeroed, --n keep-alive requests on 4 connections are counted, and
the total is divided by --n. nginx proxy_pass runs with `master_process off` so the one
process callgrind watches is the one that proxies. Then each profile's self cost is grouped
by where it was spent (pingora-core, tokio, httparse, allocator, ...). User space only: the
kernel's part of a syscall is not counted (bench/README.md gives syscalls per request).

usage: count.py LEAN_BINARY [--modes s0,s3,r1] [-n 2000] [--keep DIR]
"""
import argparse, os, re, signal, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import run as B  # noqa: E402
import instructions as I  # noqa: E402
import peers as P  # noqa: E402

# Where an instruction was spent: by the crate that a function's name starts with (drop glue
# and other generic `core::` code by the type it works on), the allocator and libc by name or
# binary. After LTO a function inlined into another counts as that other's.
CRATES = {"tokio": "tokio", "mio": "tokio", "httparse": "httparse", "http": "http / pingora-http (header maps)",
          "pingora_http": "http / pingora-http (header maps)", "pingora_core": "pingora-core",
          "pingora_pool": "pingora-core", "pingora_runtime": "pingora-core", "pingora_error": "pingora-core",
          "pingora_timeout": "pingora-timeout", "pingora_proxy": "pingora-proxy", "pingora_cache": "pingora-proxy",
          "bytes": "bytes", "lean": "the floor's own code", "std": "Rust std/core", "core": "Rust std/core",
          "alloc": "Rust std/core", "mimalloc": "allocator", "async_trait": "Rust std/core"}
ORDER = ["pingora-proxy", "pingora-core", "pingora-timeout", "http / pingora-http (header maps)", "httparse",
         "bytes", "tokio", "allocator", "memcpy/memmove/memset", "libc (syscall wrappers, other)",
         "Rust std/core", "the floor's own code", "nginx", "other"]


def where(function, binary):
    if re.match(r"_?mi_|__rust_(alloc|dealloc|realloc)|__rdl_|malloc$|free$|realloc$|calloc$", function):
        return "allocator"
    if re.search(r"mem(cpy|move|set|cmp)", function):
        return "memcpy/memmove/memset"
    if "nginx" in binary:
        return "nginx"
    if "libc" in binary or "ld-linux" in binary:
        return "libc (syscall wrappers, other)"
    generic = re.match(r"<?core::ptr::drop_in_place<(.*)", function)
    name = generic.group(1) if generic else function
    crate = re.match(r"[<&\s]*(?:dyn )?(\w+)::", name)
    return CRATES.get(crate.group(1), "other") if crate else "other"


def groups(profile, n):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", profile],
                         capture_output=True, text=True, check=True).stdout
    totals = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S*?):(.*) \[(.*)\]$", line)
        # After a zeroing, the frames that were on the stack show the whole run as their own
        # cost: skip them (what is left adds up to the total).
        if not m or float(m.group(2)) >= 99.0:
            continue
        g = where(m.group(4), m.group(5))
        totals[g] = totals.get(g, 0) + int(m.group(1).replace(",", ""))
    return {g: v / n for g, v in totals.items()}


def allocations(profile, n):
    """Calls into the allocator from outside it, per request (malloc, realloc and friends)."""
    names, fn, cfn, calls = {}, "", "", 0
    alloc = re.compile(r"^(_?mi_\w*(malloc|zalloc|calloc|realloc)\w*|malloc|calloc|realloc|__rust_(alloc|realloc|alloc_zeroed))$")

    def name(rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "")
    with open(profile) as f:
        for line in f:
            if line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name(line[4:].strip())
            elif line.startswith("calls="):
                if alloc.match(cfn) and not re.match(r"_?mi_|__rust_", fn):
                    calls += int(line[6:].split()[0])
    return calls / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--modes", default="proxy,s0,s1,s2,s3,r0,r1")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--keep", metavar="DIR", help="leave the profiles there (cg.MODE.N)")
    ap.add_argument("--out", default=os.path.join(B.ROOT, "bench", "results", "lean-instructions.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or tmp
        os.makedirs(where, exist_ok=True)
        bp = B.free_port()
        backend = B.nginx(tmp, "backend", 1, f'server {{ listen 127.0.0.1:{bp}; location / {{ return 200 "ok\\n"; }} }}')
        B.wait_port(bp)
        try:
            for mode in ["nginx"] + args.modes.split(","):
                port = B.free_port()
                out = os.path.join(where, f"cg.{mode}")
                if mode == "nginx":
                    conf = os.path.join(tmp, "proxy.conf")
                    with open(conf, "w") as f:
                        f.write(f"""master_process off; daemon off; worker_processes 1;
pid {tmp}/proxy.pid; error_log {tmp}/proxy.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{bp}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
                    argv = ["nginx", "-c", conf, "-p", tmp]
                else:
                    argv = [args.binary, mode, f"127.0.0.1:{port}", f"127.0.0.1:{bp}"]
                p = I.under_callgrind(out, argv)
                try:
                    B.wait_port(port, timeout=120)
                    I.drive(port, args.warmup)
                    total = I.counted(p.pid, out, lambda: I.drive(port, args.n))
                finally:
                    # SIGINT: pingora's fast shutdown (SIGTERM waits out its grace period).
                    p.send_signal(signal.SIGQUIT if mode == "nginx" else signal.SIGINT)
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:  # counted and dumped already
                        p.kill()
                        p.wait()
                dump = sorted((f for f in os.listdir(where) if f.startswith(f"cg.{mode}.")),
                              key=lambda f: os.path.getmtime(os.path.join(where, f)))[-1]
                profile = os.path.join(where, dump)
                rows.append((mode, total / args.n, groups(profile, args.n), allocations(profile, args.n)))
                print(f"{mode}: {total / args.n / 1000:.1f}k", flush=True)
        finally:
            backend.terminate()
    used = [g for g in ORDER if any(r[2].get(g, 0) >= 50 for r in rows)]
    lines = [f"# bench/lean/count.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"callgrind; {args.n} keep-alive requests on 4 connections after {args.warmup} uncounted; "
             "instructions per request, self cost grouped by where it was spent (user space only).", "",
             "| where | " + " | ".join(r[0] for r in rows) + " |",
             "|---|" + "---:|" * len(rows),
             "| **total** | " + " | ".join(f"**{r[1] / 1000:.1f}k**" for r in rows) + " |"]
    for g in used:
        lines.append(f"| {g} | " + " | ".join(f"{r[2].get(g, 0) / 1000:.1f}k" for r in rows) + " |")
    lines.append("| calls into the allocator per request | " + " | ".join(f"{r[3]:.1f}" for r in rows) + " |")
    P.write_report(lines, args.out)


if __name__ == "__main__":
    main()
