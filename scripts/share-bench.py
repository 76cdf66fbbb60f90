#!/usr/bin/env python3
"""Server processes shared by sessions (`reverse --share always`) against a process per session
(`--share never`), with a real server as the command:

1. memory: SESSIONS sessions opened (initialize, initialized, one `echo` call each) and kept
   open; then the total resident memory (RSS) of shadowcat and every process under it;
2. throughput: 16 sessions calling `echo` at once, CALLS calls each; calls per second.

    python3 scripts/share-bench.py target/release/shadowcat 200 -- \\
        target/test-env/mcp-2.3.0/bin/python tests/peers/sdk_server_v2.py

docs/performance.md ("Shared server processes") has the figures.
"""

import http.client
import json
import os
import subprocess
import sys
import threading
import time

CONCURRENT = 16
CALLS = 100


def start(shadowcat: str, share: str, sessions: int, server: list):
    limit = str(sessions + CONCURRENT + 8)
    proc = subprocess.Popen(
        [shadowcat, "--log-level", "warn", "reverse", "--listen", "127.0.0.1:0",
         "--session-store", "memory", "--share", share, "--max-sessions", limit,
         "--max-sessions-per-client", limit, "--max-sessions-per-child", limit,
         "--pool-acquire-timeout", "120s", "--", *server],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # --log-level warn hides the "listening" line: find the port from /proc.
    deadline = time.time() + 30
    while time.time() < deadline:
        port = listening_port(proc.pid)
        if port:
            return proc, f"127.0.0.1:{port}"
        time.sleep(0.05)
    raise SystemExit("shadowcat did not start listening")


def listening_port(pid: int):
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return None
    with open("/proc/net/tcp") as tcp:
        for line in tcp.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in inodes:
                return int(fields[1].split(":")[1], 16)
    return None


class Session:
    def __init__(self, addr: str):
        host, port = addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.id = None
        self.next = 1

    def post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}
        if self.id:
            headers["Mcp-Session-Id"] = self.id
            headers["MCP-Protocol-Version"] = "2025-06-18"
        self.conn.request("POST", "/mcp", json.dumps(body), headers)
        response = self.conn.getresponse()
        text = response.read().decode()
        if self.id is None:
            self.id = response.getheader("mcp-session-id")
        if response.status == 202:
            return {}
        if text.startswith("{"):
            return json.loads(text)
        for line in text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return json.loads(line[5:])
        raise SystemExit(f"no answer: {response.status} {text[:200]}")

    def open(self):
        answer = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "share-bench", "version": "1"}}})
        if "result" not in answer:
            raise SystemExit(f"initialize failed: {answer}")
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def echo(self, text: str):
        self.next += 1
        answer = self.post({"jsonrpc": "2.0", "id": self.next, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": text}}})
        got = answer["result"]["content"][0]["text"]
        if got != text:
            raise SystemExit(f"asked for {text!r}, got {got!r}")


def tree_rss_kib(root: int) -> tuple:
    """Total VmRSS of `root` and its descendants, and how many processes that is."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total, len(tree)


def in_threads(count: int, work):
    errors = []

    def run(n):
        try:
            work(n)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} sessions failed: {errors[0]}")


def bench(shadowcat: str, share: str, sessions: int, server: list) -> dict:
    proc, addr = start(shadowcat, share, sessions, server)
    try:
        opened = [Session(addr) for _ in range(sessions)]
        began = time.perf_counter()
        # Eight at a time (as the pool starts processes), each session then makes one call.
        def open_some(n):
            for s in opened[n::8]:
                s.open()
                s.echo(f"hello {n}")
        in_threads(8, open_some)
        opening = time.perf_counter() - began
        time.sleep(2)
        rss, processes = tree_rss_kib(proc.pid)
        for s in opened:
            s.conn.close()
        busy = [Session(addr) for _ in range(CONCURRENT)]
        in_threads(CONCURRENT, lambda n: busy[n].open())
        began = time.perf_counter()
        in_threads(CONCURRENT, lambda n: [busy[n].echo(f"s{n} c{i}") for i in range(CALLS)])
        elapsed = time.perf_counter() - began
        return {
            "share": share,
            "sessions": sessions,
            "opened_in_s": round(opening, 1),
            "processes": processes,
            "rss_mib": round(rss / 1024, 1),
            "calls_per_s_16_sessions": round(CONCURRENT * CALLS / elapsed),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def one_server_rss_mib(server: list) -> float:
    """The RSS of the command run alone, after an initialize and one call."""
    proc = subprocess.Popen(server, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for msg in [
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "share-bench", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"text": "x"}}},
        ]:
            proc.stdin.write(json.dumps(msg) + "\n")
            proc.stdin.flush()
            if "id" in msg:
                proc.stdout.readline()
        time.sleep(1)
        return round(tree_rss_kib(proc.pid)[0] / 1024, 1)
    finally:
        proc.kill()
        proc.wait()


def main():
    if len(sys.argv) < 4 or "--" not in sys.argv:
        raise SystemExit(__doc__)
    shadowcat, sessions = sys.argv[1], int(sys.argv[2])
    server = sys.argv[sys.argv.index("--") + 1:]
    print(json.dumps({"server_alone_rss_mib": one_server_rss_mib(server)}), flush=True)
    for share in ["always", "never"]:
        print(json.dumps(bench(shadowcat, share, sessions, server)), flush=True)


main()
