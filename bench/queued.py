#!/usr/bin/env python3
"""What a queued request costs in memory (issue 17, item 6), on the release build.

The method of `tests/e2e/queue.rs`'s `ten_thousand_queued_requests_hold_no_bodies_and_bounded_memory`
(which runs the debug build): an upstream that holds every request, target/release/floodgate
with `queue: { max_concurrency: 1, max_size: 20000 }`, one request holding the one slot, then N
connections each sending a GET (and N more each sending a POST with its whole 16 KiB body),
all of them waiting in the queue; the growth of floodgate's resident memory (VmRSS) divided by
the requests. Runs once with the HTTP/1.1 fast path (the default) and, with --both, once more
with every connection sent to pingora-proxy (each request carries `Connection: keep-alive`,
which the fast path leaves to pingora), so the two paths are measured in one run.

Prints a table; nothing here is a pass/fail test. `cargo build --release` first.
"""
import argparse, asyncio, os, resource, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402  (free ports)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def hold_upstream(port, seen):
    """An upstream that reads each request head and never answers."""
    async def serve(r, w):
        try:
            while True:
                line = await r.readline()
                if not line:
                    return
                if line.startswith(b"GET") or line.startswith(b"POST"):
                    seen.append(line)
        except Exception:
            return
    return await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)


async def park(port, n, head, body):
    conns = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(head + body)
        conns.append((r, w))
        if i % 500 == 499:
            await asyncio.sleep(0)
    return conns


async def wait_depth(mport, want, limit=60):
    start = time.time()
    while time.time() - start < limit:
        d = metric(mport, "floodgate_queue_depth")
        if d is not None and d >= want:
            return True
        await asyncio.sleep(0.2)
    return False


async def measure(binary, n, pingora):
    up_port, port, mport = B.free_port(), B.free_port(), B.free_port()
    seen = []
    server = await hold_upstream(up_port, seen)
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "floodgate.yaml")
    with open(cfg, "w") as f:
        f.write(
            f"listen: 127.0.0.1:{port}\nupstream: {{ address: 127.0.0.1:{up_port} }}\n"
            f"metrics: {{ listen: 127.0.0.1:{mport} }}\n"
            "server: { threads: 1, max_connections: 30000 }\n"
            "queue: { max_concurrency: 1, max_size: 30000, timeout_ms: 300000 }\n"
            "logging: { access_log: false }\n"
        )
    proc = subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        extra = b"connection: keep-alive\r\n" if pingora else b""
        first = await park(port, 1, b"GET /hold HTTP/1.1\r\nhost: x\r\n" + extra + b"\r\n", b"")
        while not seen:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        idle = rss(proc.pid)
        gets = await park(port, n, b"GET /queued HTTP/1.1\r\nhost: x\r\n" + extra + b"\r\n", b"")
        assert await wait_depth(mport, n), "the GETs did not all queue"
        await asyncio.sleep(0.5)
        with_gets = rss(proc.pid)
        body = b"x" * 16384
        posts = await park(
            port, n, b"POST /queued HTTP/1.1\r\nhost: x\r\ncontent-length: 16384\r\n" + extra + b"\r\n", body
        )
        assert await wait_depth(mport, 2 * n), "the POSTs did not all queue"
        await asyncio.sleep(0.5)
        with_posts = rss(proc.pid)
        fast = metric(mport, 'floodgate_http1_path_total{path="fast"}')
        for _, w in first + gets + posts:
            w.close()
        return idle, (with_gets - idle) / n, (with_posts - with_gets) / n, fast
    finally:
        proc.kill()
        proc.wait()
        server.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="GETs and as many POSTs (default 5000)")
    ap.add_argument("--both", action="store_true", help="also measure pingora-proxy's path")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "floodgate"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for pingora in ([False, True] if args.both else [False]):
        idle, get, post, fast = asyncio.run(measure(args.binary, args.n, pingora))
        rows.append((pingora, idle, get, post, fast))
    print(f"| path | RSS idle | per queued GET | per queued POST (16 KiB body sent) | fast-path requests |")
    print("|---|---:|---:|---:|---:|")
    for pingora, idle, get, post, fast in rows:
        name = "pingora-proxy (`Connection: keep-alive`)" if pingora else "fast path"
        print(f"| {name} | {idle / 2**20:.1f} MiB | {get / 1024:.1f} KiB | {post / 1024:.1f} KiB | {fast:.0f} |")


if __name__ == "__main__":
    main()
