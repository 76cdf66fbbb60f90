"""Test peer: a real MCP stdio server built on the official Python SDK, mcp==1.30.0.

Run it with the interpreter of a virtualenv that has ``mcp==1.30.0`` installed:

    /tmp/v1/bin/python tests/peers/sdk_server_v1.py

Same surface as ``sdk_server_v2.py`` (only the server name differs), written
against the 1.x ``FastMCP`` API:

* tools
  - ``echo(text: str) -> str``      returns ``text`` unchanged
  - ``add(a: int, b: int) -> int``  returns ``a + b``
  - ``ask(question: str) -> str``   sends ``sampling/createMessage`` to the
    client in the middle of the ``tools/call`` and returns the answer's text
  - ``confirm(item: str) -> str``   asks the client to confirm (``elicitation/create``)
    and says what it answered
  - ``grow() -> str``               sends ``notifications/tools/list_changed`` on the
    standalone stream (the GET stream over HTTP)
* resource ``peer://info`` (static text)
* prompt ``greet(name)``

The 1.x SDK only speaks handshake-era protocol versions (newest 2025-11-25),
so sampling is always a standalone server -> client request.
"""

from __future__ import annotations

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel

mcp = FastMCP(name="shadowcat-peer-v1", log_level="WARNING")
# FastMCP has no `version=` argument and would otherwise report the installed
# `mcp` package version; pin it so the client's summary is deterministic.
mcp._mcp_server.version = "1.30.0-peer"


@mcp.tool()
def echo(text: str) -> str:
    """Return the given text unchanged."""
    return text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
async def ask(question: str, ctx: Context) -> str:
    """Ask the client's LLM a question (via sampling) and return its answer."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=64,
        # Tie the request to the in-flight tools/call (matters for HTTP transports;
        # harmless on stdio).
        related_request_id=ctx.request_id,
    )
    content = result.content
    if isinstance(content, TextContent):
        return content.text
    return f"<non-text sampling answer: {content.type}>"


class Confirmation(BaseModel):
    confirmed: bool
    note: str


@mcp.tool()
async def confirm(item: str, ctx: Context) -> str:
    """Ask the user (elicitation) to confirm, and say what they answered."""
    result = await ctx.elicit(message=f"Really do {item}?", schema=Confirmation)
    if result.action != "accept":
        return f"{item}: {result.action}"
    return f"{item}: confirmed={result.data.confirmed}, note={result.data.note}"


@mcp.tool()
async def grow(ctx: Context) -> str:
    """Tell the client that the tool list changed (a notification tied to no request)."""
    await ctx.session.send_tool_list_changed()
    return "told"


@mcp.tool()
async def work(steps: int, ctx: Context) -> str:
    """Report progress for each step, log once, and say how many steps were done."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps)
    await ctx.info(f"worked {steps} steps")
    return f"did {steps} steps"


@mcp.resource("peer://info", name="info", mime_type="text/plain")
def info() -> str:
    """A static text resource."""
    return "shadowcat test peer (python sdk 1.30.0)"


@mcp.prompt()
def greet(name: str) -> str:
    """A one-message prompt template."""
    return f"Say hello to {name}."


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from http_serve import parse_args, serve

    args = parse_args(sys.argv[1:])
    if args.http and args.legacy_sse:
        serve(mcp.sse_app(), args.port)
    elif args.http:
        mcp.settings.json_response = args.json
        mcp.settings.stateless_http = args.stateless
        serve(mcp.streamable_http_app(), args.port)
    else:
        mcp.run("stdio")
