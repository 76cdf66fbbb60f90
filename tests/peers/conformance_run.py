#!/usr/bin/env python3
"""Run the official MCP conformance suite's server scenarios against one URL; print one JSON object.

    python3 tests/peers/conformance_run.py --url http://127.0.0.1:PORT/mcp --spec-version 2025-11-25

The suite (``@modelcontextprotocol/conformance``) and the Node it needs are pinned in
``tests/conformance/`` (``npm ci --prefix tests/conformance``); ``--node`` and
``--suite-js`` point elsewhere.  The suite writes one ``checks.json`` per scenario
into a temporary directory; this script reads them back and prints, on stdout:

    {"scenarios": {"<scenario>": {"<check id>": "<status>", ...}, ...}}

Without ``--suite`` the suite runs its default "active" set, which leaves out its
"pending" scenarios and every scenario introduced in 2026-07-28; ``--suite all``
runs those too.  Statuses are the suite's own strings (SUCCESS, FAILURE, WARNING,
INFO, SKIPPED).  A check id seen more than once in a scenario keeps its id the first time and gets
``#2``, ``#3``, ... after that, in the order the suite recorded them.  A scenario
that ran but left no ``checks.json`` (it threw) is recorded as the suite records
it: one FAILURE check named after the scenario.

Everything the suite prints goes to stderr.  Exit status: 0 whenever the suite
ran, whatever the checks say (the caller compares); 2 if it could not be started
or produced no results at all; 3 if it stopped early (fewer scenarios than it
announced; the JSON for those that did run is still printed).

Plain Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "tests" / "conformance" / "node_modules"
DEFAULT_NODE = INSTALL / ".bin" / "node"
DEFAULT_SUITE_JS = INSTALL / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

# The suite names each result directory "server-<scenario>-<ISO time with : and . as ->".
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d{3}Z$")
ANNOUNCED = re.compile(r"^Running .* \((\d+) scenarios\) against ")
RAN = re.compile(r"^Running client scenario '(.+?)' against server")
NOT_APPLICABLE = re.compile(r"^SKIPPED: scenario '(.+?)' is not applicable")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the MCP endpoint, e.g. http://127.0.0.1:PORT/mcp")
    p.add_argument("--spec-version", required=True, help="e.g. 2025-11-25 or 2026-07-28")
    p.add_argument("--node", default=str(DEFAULT_NODE), help="Node >= 22 (default: the pinned one)")
    p.add_argument("--suite-js", default=str(DEFAULT_SUITE_JS), help="the suite's dist/index.js")
    p.add_argument("--suite", help="suite to run: active (the suite's default), all, pending, draft")
    p.add_argument("--scenario", help="run just this scenario")
    p.add_argument("--timeout", type=int, help="per-scenario timeout in ms (suite default 30000)")
    p.add_argument("--keep", metavar="DIR", help="keep the suite's raw results in this (empty) directory")
    return p.parse_args(argv)


def unique_checks(checks: list[dict]) -> dict[str, str]:
    """{check id: status}, repeated ids suffixed #2, #3, ... in recorded order."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for check in checks:
        cid = str(check.get("id", "?"))
        seen[cid] = seen.get(cid, 0) + 1
        key = cid if seen[cid] == 1 else f"{cid}#{seen[cid]}"
        out[key] = str(check.get("status", "?"))
    return out


def run_suite(args: argparse.Namespace, out_dir: Path) -> tuple[int, list[str]]:
    """Run the suite, copying its stdout to our stderr; return (exit code, its stdout lines)."""
    cmd = [args.node, args.suite_js, "server", "--url", args.url, "--spec-version", args.spec_version]
    cmd += ["-o", str(out_dir)]
    for flag, value in (("--suite", args.suite), ("--scenario", args.scenario), ("--timeout", args.timeout)):
        if value is not None:
            cmd += [flag, str(value)]
    print("conformance_run: " + " ".join(cmd), file=sys.stderr, flush=True)
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line.rstrip("\n"))
    sys.stderr.flush()
    return proc.returncode, lines


def collect(out_dir: Path, lines: list[str]) -> dict[str, dict[str, str]]:
    not_applicable = {m.group(1) for line in lines if (m := NOT_APPLICABLE.match(line))}
    scenarios: dict[str, dict[str, str]] = {}
    for result in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        m = RESULT_DIR.match(result.name)
        if not m:
            continue
        name = m.group("scenario")
        checks_file = result / "checks.json"
        if checks_file.is_file():
            scenarios[name] = unique_checks(json.loads(checks_file.read_text(encoding="utf-8")))
        elif name not in not_applicable:
            scenarios[name] = {name: "FAILURE"}  # it threw; the suite counts that as this one failure
    # A scenario the suite started but left no directory for: count it failed too.
    for line in lines:
        if (m := RAN.match(line)) and m.group(1) not in scenarios and m.group(1) not in not_applicable:
            scenarios[m.group(1)] = {m.group(1): "FAILURE"}
    return dict(sorted(scenarios.items()))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for what, path in (("node", args.node), ("suite", args.suite_js)):
        if not Path(path).exists():
            print(f"conformance_run: {what} not found at {path} (npm ci --prefix tests/conformance)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        out_dir = Path(args.keep) if args.keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            code, lines = run_suite(args, out_dir)
        except OSError as exc:
            print(f"conformance_run: could not start the suite: {exc}", file=sys.stderr)
            return 2
        scenarios = collect(out_dir, lines)
    announced = next((int(m.group(1)) for line in lines if (m := ANNOUNCED.match(line))), None)
    if not scenarios and not any(NOT_APPLICABLE.match(line) for line in lines):
        print(f"conformance_run: the suite produced no results (exit {code})", file=sys.stderr)
        return 2
    print(json.dumps({"scenarios": scenarios}, indent=1))
    if announced is not None and len(scenarios) < announced:
        print(f"conformance_run: the suite announced {announced} scenarios but {len(scenarios)} ran", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
