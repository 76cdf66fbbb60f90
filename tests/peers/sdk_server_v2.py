"""Test peer: a real MCP stdio server built on the official Python SDK, mcp==2.3.0.

Run it with the interpreter of a virtualenv that has ``mcp==2.3.0`` installed:

    /tmp/v2/bin/python tests/peers/sdk_server_v2.py

It speaks newline-delimited JSON-RPC on stdin/stdout (the SDK's stdio
transport); anything it logs goes to stderr.  It exposes:

* tools
  - ``echo(text: str) -> str``      returns ``text`` unchanged
  - ``add(a: int, b: int) -> int``  returns ``a + b``
  - ``ask(question: str) -> str``   asks the *client* to sample an answer
    (server -> client ``sampling/createMessage``) and returns its text
  - ``confirm(item: str) -> str``   asks the client to confirm (elicitation, by
    the same mechanism as ``ask``) and says what it answered
  - ``grow() -> str``               sends ``notifications/tools/list_changed`` on the
    standalone stream (the GET stream over HTTP; handshake-era versions)
  - with ``--resumable``: ``announce(text)`` logs ``text`` on the standalone stream,
    ``cut(text)`` closes that stream and then logs ``text``, ``poll(steps)`` reports a step,
    closes its request's stream, then reports the rest and answers (events are kept in
    memory for Last-Event-ID)
  - with ``--mirrored``: ``regional(region)``, ``region`` marked ``x-mcp-header: Region``
* resource ``peer://info`` (static text)
* prompt ``greet(name)``

How ``ask`` reaches the client depends on the negotiated protocol version,
and the SDK picks the right mechanism for us through the ``Resolve``/``Sample``
dependency-injection markers:

* handshake-era versions (<= 2025-11-25, client ``mode="legacy"``, or any
  older client): a standalone ``sampling/createMessage`` request is sent to
  the client in the middle of the ``tools/call``;
* 2026-07-28 (client ``mode="auto"`` against this server): the first
  ``tools/call`` returns an ``InputRequiredResult`` carrying the sampling
  request, and the client retries the call with the answer.

Either way the tool body only ever sees the final ``CreateMessageResult``.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve, Sample
from mcp.types import CreateMessageResult, SamplingMessage, TextContent
from pydantic import BaseModel, Field

import otel_peer

# With OTLP_TRACES_URL, the SDK's spans are exported (tests/tracing.rs).
otel_peer.install()

# A fixed version string keeps `serverInfo` deterministic in the client's summary.
mcp = MCPServer(name="shadowcat-peer-v2", version="2.3.0-peer", log_level="WARNING")


def _log_call(tool: str, arguments: dict) -> None:
    """PEER_CALL_LOG names a file each call is appended to (what reached the server)."""
    path = os.environ.get("PEER_CALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"tool": tool, "arguments": arguments}, sort_keys=True) + "\n")


@mcp.tool()
def echo(text: str) -> str:
    """Return the given text unchanged."""
    _log_call("echo", {"text": text})
    # PEER_ECHO_UPPER stands for a changed server build (`tape verify` must catch it).
    return text.upper() if os.environ.get("PEER_ECHO_UPPER") else text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    _log_call("add", {"a": a, "b": b})
    return a + b


def _sample_question(question: str) -> Sample:
    """Resolver for `ask`: turn the tool argument into a sampling request to the client."""
    return Sample(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=64,
    )


@mcp.tool()
async def ask(
    question: str,
    answer: Annotated[CreateMessageResult, Resolve(_sample_question)],
) -> str:
    """Ask the client's LLM a question (via sampling) and return its answer."""
    content = answer.content
    if isinstance(content, TextContent):
        return content.text
    return f"<non-text sampling answer: {content.type}>"


class Confirmation(BaseModel):
    confirmed: bool
    note: str


def _ask_confirmation(item: str) -> Elicit[Confirmation]:
    """Resolver for `confirm`: ask the user about `item`."""
    return Elicit(f"Really do {item}?", Confirmation)


@mcp.tool()
async def confirm(item: str, answer: Annotated[Confirmation, Resolve(_ask_confirmation)]) -> str:
    """Ask the user (elicitation) to confirm, and say what they answered."""
    return f"{item}: confirmed={answer.confirmed}, note={answer.note}"


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


# Registered only with --resumable (so the default tool list stays as it is):


async def announce(text: str, ctx: Context) -> str:
    """Log `text` on the standalone stream (the GET stream; handshake-era versions)."""
    await ctx.session.send_log_message(level="info", data=text)
    return "announced"


async def cut(text: str, ctx: Context) -> str:
    """Close the standalone GET stream, then log `text` on it: kept, not sent (no stream is
    open), so only a client resuming with Last-Event-ID gets it."""
    await ctx.close_standalone_sse_stream()
    await ctx.session.send_log_message(level="info", data=text)
    return "cut"


async def poll(steps: int, ctx: Context) -> str:
    """Report the first step, close the request's stream (SEP-1699 polling: the client comes
    back with Last-Event-ID), then report the other steps and answer, kept for that return."""
    await ctx.report_progress(1, steps)
    await ctx.close_sse_stream()
    for step in range(2, steps + 1):
        await anyio.sleep(0.1)
        await ctx.report_progress(step, steps)
    return f"polled {steps} steps"


# Registered only with --mirrored:


async def regional(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
    """Say which region was asked for; `region` is mirrored in the Mcp-Param-Region header."""
    _log_call("regional", {"region": region})
    return f"region {region}"


@mcp.resource("peer://info", name="info", mime_type="text/plain")
def info() -> str:
    """A static text resource."""
    return "shadowcat test peer (python sdk 2.3.0)"


@mcp.prompt()
def greet(name: str) -> str:
    """A one-message prompt template."""
    return f"Say hello to {name}."


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from http_serve import parse_args, serve

    from http_serve import MemoryEventStore

    args = parse_args(sys.argv[1:])
    if args.resumable:
        mcp.tool()(announce)
        mcp.tool()(cut)
        mcp.tool()(poll)
    if args.mirrored:
        mcp.tool()(regional)
    if args.http and args.legacy_sse:
        serve(mcp.sse_app(), args.port)
    elif args.http:
        app = mcp.streamable_http_app(
            json_response=args.json,
            stateless_http=args.stateless,
            event_store=MemoryEventStore.create() if args.resumable else None,
        )
        serve(app, args.port)
    else:
        mcp.run("stdio")
