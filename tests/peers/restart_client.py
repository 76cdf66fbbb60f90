"""One MCP session (Python SDK 1.x client) across a crash of its server: calls `echo`, prints
`{"step": "ready", ...}`, waits for a line on stdin (the test kills the server meanwhile and
waits for it to be restarted), calls `echo` again in the same session and prints
`{"step": "after", ...}` (with the session id it used, over HTTP).

    python restart_client.py -- shadowcat forward stdio --restart on-failure -- <server...>
    python restart_client.py --url http://127.0.0.1:PORT/mcp
"""

import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


async def session_steps(read, write, session_id=lambda: None) -> None:
    async with ClientSession(read, write) as session:
        await session.initialize()
        before = await session.call_tool("echo", {"text": "before"})
        print(json.dumps({"step": "ready", "text": before.content[0].text,
                          "session": session_id()}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        after = await session.call_tool("echo", {"text": "after"})
        print(json.dumps({"step": "after", "isError": after.isError,
                          "text": after.content[0].text, "session": session_id()}), flush=True)


async def main() -> None:
    if sys.argv[1] == "--url":
        async with streamablehttp_client(sys.argv[2]) as (read, write, get_session_id):
            await session_steps(read, write, get_session_id)
        return
    command = sys.argv[sys.argv.index("--") + 1:]
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with stdio_client(params) as (read, write):
        await session_steps(read, write)


anyio.run(main)
