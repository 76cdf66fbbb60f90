#!/usr/bin/env bash
# What the optional pipeline stages cost the forward proxy, in instructions (callgrind counts
# them repeatably, whatever else the machine is doing): N pipelined `tools/call echo` requests
# through `shadowcat forward stdio` against the fixture server, plain, with `--record`, and
# with `--rules` (100 rules that match nothing here: 50 on tool names, 50 on other methods, as
# in benches/e2e.rs).
# Usage: scripts/stage-cost.sh   (needs valgrind; builds release binaries first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin shadowcat --example fixture_server
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shadowcat=target/release/shadowcat
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
instructions() { # <input> [--record DIR]; stdout is a pipe, as a real client's is
    local input=$1
    shift
    SHADOWCAT_DATA_DIR="$work/data" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$shadowcat" --log-level warn forward stdio "$@" -- "$fixture" <"$input" 2>"$work/log" \
        | cat >/dev/null
    sed -n 's/.*Collected : //p' "$work/log"
}
echo "| payload | instructions, plain | with --record | recording adds | with --rules (100) | rules add |"
echo "|---|---|---|---|---|---|"
for name in 64B 64KiB; do
    plain=$(instructions "$work/$name.jsonl")
    mkdir -p "$work/tapes-$name"
    recorded=$(instructions "$work/$name.jsonl" --record "$work/tapes-$name")
    ruled=$(instructions "$work/$name.jsonl" --rules "$work/rules.yaml")
    awk -v n="$name" -v p="$plain" -v r="$recorded" -v u="$ruled" \
        'BEGIN { printf "| %s | %d | %d | +%.1f%% | %d | +%.1f%% |\n", n, p, r, 100 * (r - p) / p, u, 100 * (u - p) / p }'
done
