#!/usr/bin/env python3
"""Pipelines N `tools/call echo` requests into a stdio MCP command at once; prints how many were
answered, how many were errors, the time, and the command's peak resident memory (VmHWM).

    SHADOWCAT_SESSION_STORE=memory python3 scripts/pipeline-rss.py 10000 \\
        target/release/shadowcat forward stdio --max-pending-requests 100 -- \\
        target/release/examples/fixture_server

The requests are written by one thread while the answers are read on another, as a pipelining
client does. Each answer must carry its own payload. docs/performance.md ("Backpressure") has
the figures.
"""

import json
import subprocess
import sys
import threading
import time


def main() -> None:
    n = int(sys.argv[1])
    proc = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=1 << 20
    )
    init = {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pipeline-rss", "version": "1"}}}
    proc.stdin.write((json.dumps(init) + "\n").encode())
    proc.stdin.flush()
    proc.stdout.readline()
    proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    calls = b"".join(
        (json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": f"m{i}"}}}) + "\n").encode()
        for i in range(n)
    )
    started = time.time()
    writer = threading.Thread(target=lambda: (proc.stdin.write(calls), proc.stdin.flush()))
    writer.start()
    seen, errors = set(), 0
    for _ in range(n):
        answer = json.loads(proc.stdout.readline())
        if "error" in answer:
            errors += 1
        elif answer["result"]["content"][0]["text"] != f"m{answer['id']}":
            sys.exit(f"answer with another request's payload: {answer}")
        seen.add(answer["id"])
    elapsed = time.time() - started
    with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    writer.join()
    proc.stdin.close()
    proc.wait()
    print(f"answered {len(seen)} of {n}, errors {errors}, {elapsed:.2f}s, peak RSS {peak_kib / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
