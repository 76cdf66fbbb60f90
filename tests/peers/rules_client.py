"""Test peer for interceptor rules: a real MCP stdio client on the Python SDK (mcp 2.x).

    python rules_client.py [--call TOOL JSON]... -- <server command> [args...]

Connects (initialize), lists tools, makes each ``--call`` in order, and prints ONE line of
JSON: ``{"tools": [names...], "calls": [{"tool", "text", "ms"} or {"tool", "error": {code,
message}}...]}`` (``ms``: how long the call took). A JSON-RPC error answering a call is a result here, not a failure; the exit
status is 1 only if the session itself fails. An overall deadline (30 s) keeps it from hanging.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import anyio
from mcp import Client, StdioServerParameters


async def run(command: list[str], calls: list[tuple[str, dict]]) -> dict:
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    out: dict = {"calls": []}
    async with Client(params, mode="legacy", cache=None) as client:
        listed = await client.list_tools()
        out["tools"] = sorted(tool.name for tool in listed.tools)
        for tool, arguments in calls:
            started = time.monotonic()
            try:
                result = await client.call_tool(tool, arguments)
            except Exception as e:  # noqa: BLE001 - an error answer is what some tests expect
                error = getattr(e, "error", None)
                code = getattr(error, "code", getattr(e, "code", None))
                message = getattr(error, "message", str(e))
                out["calls"].append({"tool": tool, "error": {"code": code, "message": message}})
                continue
            text = "".join(getattr(c, "text", "") for c in result.content)
            entry = {"tool": tool, "text": text, "ms": round((time.monotonic() - started) * 1000)}
            if result.is_error:
                entry["is_error"] = True
            out["calls"].append(entry)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--call", nargs=2, action="append", default=[], metavar=("TOOL", "JSON"))
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    calls = [(tool, json.loads(arguments)) for tool, arguments in args.call]

    async def bounded() -> dict:
        with anyio.fail_after(30):
            return await run(args.command, calls)

    try:
        summary = anyio.run(bounded)
    except Exception as e:  # noqa: BLE001
        print(f"rules_client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
