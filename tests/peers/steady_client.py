"""One MCP session (Python SDK client over Streamable HTTP) calling `echo` steadily until told
to stop: prints `{"step": "ready", "session": ...}` after its first call, then calls on (every
20 ms) until a line arrives on stdin, and prints a summary: the calls made, each failure (an
exception, an error result or a wrong answer) and every session id it used.

    python steady_client.py --url http://127.0.0.1:PORT/mcp
"""

import json
import sys
import time

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


async def main() -> None:
    url = sys.argv[sys.argv.index("--url") + 1]
    calls, failures, sessions = 0, [], set()
    stop = anyio.Event()

    async def wait_for_stop() -> None:
        await anyio.to_thread.run_sync(sys.stdin.readline)
        stop.set()

    async with streamablehttp_client(url) as (read, write, get_session_id):
        async with ClientSession(read, write) as session:
            await session.initialize()
            first = await session.call_tool("echo", {"text": "0"})
            sessions.add(get_session_id())
            print(json.dumps({"step": "ready", "text": first.content[0].text,
                              "session": get_session_id()}), flush=True)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(wait_for_stop)
                while not stop.is_set():
                    calls += 1
                    text = str(calls)
                    started = time.monotonic()
                    try:
                        with anyio.fail_after(10):
                            result = await session.call_tool("echo", {"text": text})
                        if result.isError or result.content[0].text != text:
                            failures.append({"call": calls, "result": result.model_dump(mode="json")})
                    except Exception as e:  # noqa: BLE001 - every failure is reported
                        failures.append({"call": calls, "error": repr(e),
                                         "after_s": round(time.monotonic() - started, 3)})
                    sessions.add(get_session_id())
                    await anyio.sleep(0.02)
    print(json.dumps({"step": "done", "calls": calls, "failures": failures,
                      "sessions": sorted(s for s in sessions if s)}), flush=True)


anyio.run(main)
