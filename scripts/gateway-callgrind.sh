#!/usr/bin/env bash
# Instructions per request through `shadowcat reverse` (repeatable on a noisy machine):
# the gateway runs under callgrind in front of the HTTP fixture while one keep-alive client
# makes N `tools/call echo` requests; run it with N=0 and N=300 and divide the difference.
#
#   cargo build --release --bin shadowcat --example http_fixture
#   scripts/gateway-callgrind.sh target/release/shadowcat 0
#   scripts/gateway-callgrind.sh target/release/shadowcat 300
#
# Prints the total instruction count (callgrind's `summary:`); docs/performance.md has figures.
set -euo pipefail
bin=$(realpath "$1"); n=$2
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'kill "${fx:-}" "${gw:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$root/target/release/examples/http_fixture" > "$work/fixture.out" 2>/dev/null &
fx=$!
for _ in $(seq 100); do grep -q PORT "$work/fixture.out" && break; sleep 0.1; done
upstream=$(sed -n 's/PORT //p' "$work/fixture.out")
port=$((20000 + RANDOM % 20000))
SHADOWCAT_SESSION_STORE=memory valgrind --tool=callgrind --callgrind-out-file="$work/out" \
  "$bin" --log-level warn reverse --listen "127.0.0.1:$port" \
  --upstream "http://127.0.0.1:$upstream/mcp" 2> "$work/valgrind.log" &
gw=$!
for _ in $(seq 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  sleep 0.2
done
python3 "$root/scripts/gateway-callgrind-client.py" "$port" "$n" > /dev/null
kill -TERM "$gw"; wait "$gw" || true
grep -h '^summary:' "$work/out"
