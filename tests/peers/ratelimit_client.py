"""Test peer for rate limits: a real MCP client on the Python SDK (mcp 2.x).

    python ratelimit_client.py --calls N [--tool NAME]
        (--url URL [--local-address IP] [--spoof-xff] | -- <server command> [args...])

Connects (initialize), calls TOOL (default ``echo``, argument ``text``) N times in a row as fast
as it can, and prints ONE line of JSON:

    {"calls": [{"ok": true} | {"error": {"code", "message", "data"}}, ...],
     "posts": [{"status", "retry_after", "ratelimit", "ratelimit_policy"}, ...]}

``posts`` are the HTTP answers to every POST it made, in order (URL targets only).
``--local-address`` connects from that address (e.g. 127.0.0.2, another client to the
gateway); ``--spoof-xff`` sends a different ``X-Forwarded-For`` with every request. A JSON-RPC
error answering a call is a result here; the exit status is 1 only if the session itself fails.
An overall deadline (30 s) keeps it from hanging.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


async def run(opts: argparse.Namespace) -> dict:
    posts: list[dict] = []
    numbers = itertools.count(1)

    async def on_request(request: httpx2.Request) -> None:
        if opts.spoof_xff:
            n = next(numbers)
            request.headers["X-Forwarded-For"] = f"203.0.{n // 250}.{n % 250 + 1}"

    async def on_response(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            posts.append(
                {
                    "status": response.status_code,
                    "retry_after": response.headers.get("retry-after"),
                    "ratelimit": response.headers.get("ratelimit"),
                    "ratelimit_policy": response.headers.get("ratelimit-policy"),
                }
            )

    http = None
    if opts.url:
        transport = httpx2.AsyncHTTPTransport(local_address=opts.local_address) if opts.local_address else None
        http = httpx2.AsyncClient(
            transport=transport,
            event_hooks={"request": [on_request], "response": [on_response]},
            timeout=httpx2.Timeout(20.0),
        )
        server = streamable_http_client(opts.url, http_client=http)
    else:
        server = StdioServerParameters(command=opts.command[0], args=opts.command[1:], env=dict(os.environ))
    out: dict = {"calls": [], "posts": posts}
    try:
        async with Client(server, mode="legacy", cache=None) as client:
            for i in range(opts.calls):
                try:
                    result = await client.call_tool(opts.tool, {"text": f"call {i}"})
                except Exception as e:  # noqa: BLE001 - an error answer is what the tests expect
                    error = getattr(e, "error", None)
                    out["calls"].append(
                        {
                            "error": {
                                "code": getattr(error, "code", getattr(e, "code", None)),
                                "message": getattr(error, "message", str(e)),
                                "data": getattr(error, "data", None),
                            }
                        }
                    )
                    continue
                out["calls"].append({"ok": not result.is_error})
    finally:
        if http is not None:
            await http.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--tool", default="echo")
    parser.add_argument("--url")
    parser.add_argument("--local-address")
    parser.add_argument("--spoof-xff", action="store_true")
    parser.add_argument("command", nargs="*")
    opts = parser.parse_args()
    if bool(opts.url) == bool(opts.command):
        print("ratelimit_client: give --url or a server command", file=sys.stderr)
        return 2

    async def bounded() -> dict:
        with anyio.fail_after(30):
            return await run(opts)

    try:
        summary = anyio.run(bounded)
    except Exception as e:  # noqa: BLE001
        print(f"ratelimit_client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
