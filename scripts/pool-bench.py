#!/usr/bin/env python3
"""New-session `initialize` latency through `shadowcat reverse -- <server>`: cold (each session
starts its server) vs a warm pool (`--pool-min-idle`). Prints p50/p90/max per mode.

    python3 scripts/pool-bench.py target/release/shadowcat 20 -- \\
        target/test-env/mcp-2.3.0/bin/python tests/peers/sdk_server_v2.py

Sessions are opened one after another; in the warm run each waits until the pool is back to
its spares (/metrics), as a gateway whose sessions arrive slower than a server starts would be.
The time is from sending `initialize` to its answer, as the client sees it. docs/performance.md
("Server processes") has the figures.
"""

import http.client
import json
import statistics
import subprocess
import sys
import time

SPARES = 2


def start(shadowcat: str, extra: list, server: list):
    proc = subprocess.Popen(
        [shadowcat, "--log-level", "info", "reverse", "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--session-store", "memory", *extra, "--", *server],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addr = admin = None
    while addr is None or admin is None:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("shadowcat exited before listening")
        if "listening on http://" in line:
            addr = line.split("listening on http://")[1].split("/")[0]
        if "admin endpoints on http://" in line:
            admin = line.split("admin endpoints on http://")[1].split("/")[0]
    return proc, addr, admin


def metric(admin: str, name: str) -> float:
    host, port = admin.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def initialize(addr: str) -> float:
    host, port = addr.split(":")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "pool-bench", "version": "1"}}})
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    began = time.perf_counter()
    conn.request("POST", "/mcp", body, {
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    response = conn.getresponse()
    text = response.read().decode()
    took = time.perf_counter() - began
    session = response.getheader("Mcp-Session-Id")
    if '"result"' not in text:
        raise SystemExit(f"initialize failed: {text}")
    conn.request("DELETE", "/mcp", headers={"Mcp-Session-Id": session})
    conn.getresponse().read()
    conn.close()
    return took


def run(shadowcat: str, sessions: int, server: list, warm: bool) -> list:
    extra = ["--pool-min-idle", str(SPARES)] if warm else []
    proc, addr, admin = start(shadowcat, extra, server)
    idle = 'shadowcat_upstream_children{state="idle"}'
    times = []
    try:
        for _ in range(sessions):
            if warm:
                deadline = time.time() + 30
                while metric(admin, idle) < SPARES:
                    if time.time() > deadline:
                        raise SystemExit("the spares did not come back")
                    time.sleep(0.05)
            times.append(initialize(addr))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return times


def main() -> None:
    shadowcat, sessions = sys.argv[1], int(sys.argv[2])
    server = sys.argv[sys.argv.index("--") + 1:]
    for name, warm in [("cold", False), (f"warm (--pool-min-idle {SPARES})", True)]:
        ms = sorted(t * 1000 for t in run(shadowcat, sessions, server, warm))
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        print(f"{name:28} sessions={len(ms):3}  p50={statistics.median(ms):8.1f} ms  "
              f"p90={p90:8.1f} ms  max={ms[-1]:8.1f} ms")


if __name__ == "__main__":
    main()
