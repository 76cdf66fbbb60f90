#!/usr/bin/env bash
# Installs everything Shadowcat's tests need (pinned) and runs the whole suite:
#   - Python venvs with the MCP SDK 2.3.0 and 1.30.0 (tests/peers/requirements-*.txt; the
#     2.3.0 one also has the OpenTelemetry SDK, its OTLP exporter, and the OTLP protobuf
#     definitions and grpcio for the OTLP receiver of tests/tracing.rs),
#   - @modelcontextprotocol/server-everything and oauth2-mock-server (the OAuth issuer of
#     tests/auth.rs) from npm (tests/peers/package-lock.json),
#   - the MCP conformance suite and Node 22 from npm (tests/conformance/package-lock.json),
#   - Chromium and ChromeDriver (the live view's browser tests), HAProxy (the cluster's load
#     balancer) and redis-server (the state the cluster shares) from Debian's packages,
#   - then formatting, clippy and `cargo test` (unit, integration, doc tests; builds examples).
# Idempotent: a second run reuses what is installed. Needs only cargo, python3 and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

env_dir="$PWD/target/test-env"
mkdir -p "$env_dir"

for version in 2.3.0 1.30.0; do
  venv="$env_dir/mcp-$version"
  requirements="tests/peers/requirements-mcp-$version.txt"
  stamp="$venv/.installed"
  if [ ! -f "$stamp" ] || ! cmp -s "$requirements" "$stamp"; then
    echo "==> installing the Python MCP SDK $version into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
done

if [ ! -f tests/peers/node_modules/.package-lock.json ] || ! cmp -s tests/peers/package-lock.json "$env_dir/npm.lock"; then
  echo "==> installing npm test peers"
  npm ci --prefix tests/peers --no-audit --no-fund --loglevel=error
  cp tests/peers/package-lock.json "$env_dir/npm.lock"
fi

# The official MCP conformance suite and the Node (>= 22) it needs, both from npm.
if [ ! -f tests/conformance/node_modules/.package-lock.json ] || ! cmp -s tests/conformance/package-lock.json "$env_dir/conformance.lock"; then
  echo "==> installing the MCP conformance suite"
  npm ci --prefix tests/conformance --no-audit --no-fund --loglevel=error
  cp tests/conformance/package-lock.json "$env_dir/conformance.lock"
fi

# From Debian's packages (as root, as CI runs; otherwise ask for them): Chromium and its
# WebDriver for the live view's browser tests (tests/ui_browser.rs), HAProxy for the cluster's
# load balancer and redis-server for the state it shares (tests/cluster.rs).
missing=()
for need in chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver haproxy:/usr/sbin/haproxy redis-server:/usr/bin/redis-server; do
  [ -x "${need#*:}" ] || missing+=("${need%%:*}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing ${missing[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the tests need Debian's ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

export SHADOWCAT_TEST_ENV="$env_dir"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test"
log="$env_dir/cargo-test.log"
# A hung test fails the run instead of holding CI to its limit (a full run takes ~10 minutes).
timeout --kill-after=60s 40m cargo test --quiet 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last often empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
