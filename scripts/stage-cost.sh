#!/usr/bin/env bash
# What the optional pipeline stages cost the forward proxy, in instructions (callgrind counts
# them repeatably, whatever else the machine is doing): N pipelined `tools/call echo` requests
# through `shadowcat forward stdio` against the fixture server, plain, with `--record`, and
# with `--rules` (100 rules that match nothing here: 50 on tool names, 50 on other methods, as
# in benches/e2e.rs), and with `--otlp-endpoint` (two spans per call exported over OTLP/HTTP to
# a sink started here that accepts every batch; the export thread's instructions count), all
# sampled and 1% sampled.
# SHADOWCAT=path runs another build (e.g. an older commit's) for the columns it can.
# Usage: scripts/stage-cost.sh   (needs valgrind; builds release binaries first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin shadowcat --example fixture_server
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shadowcat=${SHADOWCAT:-target/release/shadowcat}
fixture=target/release/examples/fixture_server
python3 - "$work" <<'PY'
import json, sys
for name, size, n in [("64B", 64, 20000), ("64KiB", 65536, 2000)]:
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        f.write('{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}\n')
        f.write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        for i in range(1, n + 1):
            call = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "x" * size}}}
            f.write(json.dumps(call, separators=(",", ":")) + "\n")
with open(f"{sys.argv[1]}/rules.yaml", "w") as f:
    f.write("version: 1\nrules:\n")
    for i in range(50):
        f.write(f"  - name: tool-{i}\n    match: {{tool: 'admin_{i}_*'}}\n    block: {{}}\n")
        f.write(f"  - name: method-{i}\n    match: {{method: 'prompts/x{i}'}}\n    log: info\n")
PY
# An OTLP/HTTP sink: every POST answered 200, nothing kept.
python3 - "$work/sink-port" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), Sink)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.serve_forever()
PY
sink=$!
trap 'kill $sink 2>/dev/null; rm -rf "$work"' EXIT
while [ ! -s "$work/sink-port" ]; do sleep 0.1; done
otlp="http://127.0.0.1:$(cat "$work/sink-port")"
instructions() { # <input> [--record DIR]; stdout is a pipe, as a real client's is
    local input=$1
    shift
    SHADOWCAT_DATA_DIR="$work/data" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$shadowcat" --log-level warn forward stdio "$@" -- "$fixture" <"$input" 2>"$work/log" \
        | cat >/dev/null
    sed -n 's/.*Collected : //p' "$work/log"
}
echo "| payload | instructions, plain | with --record | recording adds | with --rules (100) | rules add | traced, all sampled | adds | traced, 1% | adds |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for name in 64B 64KiB; do
    plain=$(instructions "$work/$name.jsonl")
    mkdir -p "$work/tapes-$name"
    recorded=$(instructions "$work/$name.jsonl" --record "$work/tapes-$name")
    ruled=$(instructions "$work/$name.jsonl" --rules "$work/rules.yaml")
    if "$shadowcat" forward stdio --help | grep -q -- --otlp-endpoint; then
        traced=$(instructions "$work/$name.jsonl" --otlp-endpoint "$otlp")
        sampled=$(instructions "$work/$name.jsonl" --otlp-endpoint "$otlp" --trace-sample-ratio 0.01)
    else
        traced=0 sampled=0
    fi
    awk -v n="$name" -v p="$plain" -v r="$recorded" -v u="$ruled" -v t="$traced" -v s="$sampled" \
        'BEGIN { printf "| %s | %.0f | %.0f | +%.1f%% | %.0f | +%.1f%% | %.0f | +%.1f%% | %.0f | +%.1f%% |\n", n, p, r, 100 * (r - p) / p, u, 100 * (u - p) / p, t, 100 * (t - p) / p, s, 100 * (s - p) / p }'
done
