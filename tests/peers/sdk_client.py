"""Test peer: a real MCP stdio client built on the official Python SDK.

Runs unchanged under either SDK generation; the installed ``mcp`` version is
detected at import time:

* ``mcp`` 2.x (tested with 2.3.0): the unified ``mcp.Client``; ``--mode``
  selects ``legacy`` (initialize handshake) or ``auto`` (``server/discover``
  probe first, falling back to initialize on handshake-era servers).
* ``mcp`` 1.x (tested with 1.30.0): ``stdio_client`` + ``ClientSession``;
  ``--mode`` is accepted and ignored (1.x only knows the initialize handshake).

Usage:

    python sdk_client.py [--mode legacy|auto] [--timeout SECONDS] -- <server command> [args...]

The server command is spawned with the full environment of this process and
its stderr is passed through to ours.  The client then

1. connects (initialize or discover),
2. lists tools,
3. calls whichever of the known tools the server has:
   ``echo`` (argument ``text`` or ``message``, whichever its schema wants),
   ``add`` / ``get-sum`` ({"a": 2, "b": 40}), ``poll`` ({"steps": 3}: the server closes the
   call's stream and the client resumes it), and ``ask`` ({"question": ...})
   with a sampling callback that always answers "42 (from client)",
4. lists resources / resource templates / prompts when the server advertises
   them, and reads ``peer://info`` / gets prompt ``greet`` when present.

It prints exactly ONE line of JSON on stdout: a normalized summary with sorted
keys and sorted lists and nothing time-, id- or randomness-dependent, so that
running against a server directly and through a proxy must produce
byte-identical output.  Exit status 0 means every step succeeded (including no
tool returning ``isError``); on any failure a message goes to stderr and the
exit status is 1 (2 for usage errors).  An overall deadline (default 30 s)
guarantees the script never hangs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from typing import Any

import anyio

import mcp.types as types
from mcp import StdioServerParameters

import otel_peer

# With OTLP_TRACES_URL, the SDK's spans are exported (tests/tracing.rs).
otel_peer.install()

SDK_VERSION = importlib.metadata.version("mcp")
SDK_MAJOR = int(SDK_VERSION.split(".")[0])

if SDK_MAJOR >= 2:
    from mcp import Client
else:
    from mcp import ClientSession
    from mcp.client.stdio import stdio_client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamablehttp_client

SAMPLING_ANSWER = "42 (from client)"
ECHO_TEXT = "hello through the proxy"
ADD_ARGS = {"a": 2, "b": 40}
ASK_QUESTION = "What is 6*7?"

# Set by --no-sampling.
NO_SAMPLING = False

# Tool names the script knows how to call, per role; first match wins.
ECHO_TOOLS = ("echo",)
ADD_TOOLS = ("add", "get-sum", "get_sum")
ASK_TOOLS = ("ask",)
CONFIRM_TOOLS = ("confirm",)
ELICIT_ANSWER = {"confirmed": True, "note": "from client"}
# Extras exposed by our own Python peers (tests/peers/sdk_server_v*.py).
PEER_RESOURCE_URI = "peer://info"
PEER_PROMPT = "greet"


class PeerFailure(Exception):
    """A step produced a result that means the run failed (e.g. a tool error)."""


def dump(model: Any) -> Any:
    """Pydantic model -> plain JSON data in wire spelling (camelCase, no nulls)."""
    if model is None:
        return None
    if isinstance(model, list):
        return [dump(m) for m in model]
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------
# Sampling (server -> client sampling/createMessage)
# --------------------------------------------------------------------------

# Texts of the sampling prompts the server sent us, in arrival order.
sampling_requests: list[str] = []

# Log messages the server sent us (`notifications/message` data), in arrival order.
log_messages: list[str] = []


# Elicitation messages the server sent us, in arrival order.
elicitations: list[str] = []

# Methods of the list-changed notifications the server sent us, in arrival order.
list_changed: list[str] = []


async def elicitation_callback(context: Any, params: Any) -> types.ElicitResult:
    """Accept every elicitation with the same canned answer."""
    elicitations.append(params.message)
    return types.ElicitResult(action="accept", content=dict(ELICIT_ANSWER))


async def message_handler(message: Any) -> None:
    """Note list-changed notifications (1.x wraps notifications in a RootModel)."""
    method = getattr(getattr(message, "root", message), "method", None)
    if isinstance(method, str) and method.endswith("/list_changed"):
        list_changed.append(method)


async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
    """Keep every log message's data (as text)."""
    log_messages.append(params.data if isinstance(params.data, str) else json.dumps(params.data))


def _texts(content: Any) -> list[str]:
    """Text parts of a sampling message's content (a single block or a list)."""
    blocks = content if isinstance(content, list) else [content]
    return [b.text for b in blocks if getattr(b, "type", None) == "text"]


async def sampling_callback(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    """Answer every sampling request with the same canned text."""
    for message in params.messages:
        sampling_requests.extend(_texts(message.content))
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLING_ANSWER),
        model="shadowcat-test-client",
        stopReason="endTurn",
    )


# --------------------------------------------------------------------------
# The scenario (identical for both SDK generations)
# --------------------------------------------------------------------------


def _tool_result(name: str, result: types.CallToolResult) -> dict[str, Any]:
    """Normalize a CallToolResult: only content, structuredContent and isError.

    `_meta` and `resultType` are deliberately left out: they are protocol
    bookkeeping (2026-07-28 stamps serverInfo into `_meta`), not tool output.
    """
    data = dump(result)
    if data.get("isError"):
        raise PeerFailure(f"tool {name!r} returned isError: {json.dumps(data.get('content'))}")
    return {
        "content": data.get("content", []),
        "isError": data.get("isError", False),
        "structuredContent": data.get("structuredContent"),
    }


def _pick(available: dict[str, Any], candidates: tuple[str, ...]) -> str | None:
    return next((n for n in candidates if n in available), None)


async def run_scenario(client: Any, server_info: Any, protocol_version: str, caps: Any) -> dict[str, Any]:
    """Drive the session. `client` is a v2 `Client` or a v1 `ClientSession`;
    the request methods used here exist with the same shape on both."""
    summary: dict[str, Any] = {
        "client": {"sdk": SDK_VERSION},
        "protocolVersion": protocol_version,
        "server": {
            "name": getattr(server_info, "name", None),
            "version": getattr(server_info, "version", None),
        },
        # Only which capability groups are present; their contents vary in
        # ways (e.g. listChanged flags) that are not interesting here.
        "capabilities": sorted(k for k, v in dump(caps).items() if v is not None) if caps is not None else None,
    }

    # -- tools ---------------------------------------------------------------
    # Results are handled as wire-shaped dicts (dump()) so the same code works
    # with 1.x (camelCase attributes) and 2.x (snake_case attributes) models.
    tools: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page = dump(await client.list_tools(cursor=cursor))
        tools.update({t["name"]: t for t in page["tools"]})
        cursor = page.get("nextCursor")
        if not cursor:
            break
    summary["tools"] = [{"name": n, "inputSchema": tools[n]["inputSchema"]} for n in sorted(tools)]

    calls: dict[str, Any] = {}
    if name := _pick(tools, ECHO_TOOLS):
        # Our peers take `text`; server-everything takes `message`.
        props = tools[name]["inputSchema"].get("properties", {})
        arg = next((a for a in ("text", "message") if a in props), "text")
        calls["echo"] = _tool_result(name, await client.call_tool(name, {arg: ECHO_TEXT}))
    if name := _pick(tools, ADD_TOOLS):
        calls["add"] = _tool_result(name, await client.call_tool(name, dict(ADD_ARGS)))
    if "work" in tools:
        progress: list[list[float]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append([done, total])

        result = _tool_result("work", await client.call_tool("work", {"steps": 3}, progress_callback=on_progress))
        # A log message may travel on another stream (a gateway's GET stream) than the call's
        # answer: give it a moment to arrive.
        with anyio.move_on_after(3):
            while not any("worked 3 steps" in m for m in log_messages):
                await anyio.sleep(0.02)
        calls["work"] = {**result, "progress": progress, "logs": sorted(m for m in log_messages if "worked" in m)}
    if "poll" in tools:
        # The server closes the call's stream after the first step; the client comes back with
        # Last-Event-ID for the rest (behind a gateway cluster: perhaps at another instance).
        polled: list[list[float]] = []

        async def on_poll(done: float, total: float | None, message: str | None) -> None:
            polled.append([done, total])

        result = _tool_result("poll", await client.call_tool("poll", {"steps": 3}, progress_callback=on_poll))
        calls["poll"] = {**result, "progress": polled}
    if not NO_SAMPLING and (name := _pick(tools, ASK_TOOLS)):
        calls["ask"] = _tool_result(name, await client.call_tool(name, {"question": ASK_QUESTION}))
    if not NO_SAMPLING and (name := _pick(tools, CONFIRM_TOOLS)):
        calls["confirm"] = _tool_result(name, await client.call_tool(name, {"item": "the thing"}))
    # A notification tied to no request travels on the standalone (GET) stream, which servers
    # with a back-channel have in the handshake era (2026-07-28 clients subscribe instead).
    if not NO_SAMPLING and "grow" in tools and protocol_version != "2026-07-28":
        told = _tool_result("grow", await client.call_tool("grow", {}))
        with anyio.move_on_after(5):
            while "notifications/tools/list_changed" not in list_changed:
                await anyio.sleep(0.02)
        calls["grow"] = {**told, "listChanged": sorted(set(list_changed))}
    summary["calls"] = calls
    summary["sampling"] = {"requests": list(sampling_requests), "answer": SAMPLING_ANSWER} if sampling_requests else None
    summary["elicitation"] = {"messages": list(elicitations), "answer": ELICIT_ANSWER} if elicitations else None

    # -- resources / prompts: first page only (enough for a byte-for-byte check) --
    if caps is not None and caps.resources is not None:
        listed = dump(await client.list_resources())
        summary["resources"] = sorted(
            ({"uri": r["uri"], "name": r["name"]} for r in listed["resources"]), key=lambda r: r["uri"]
        )
        templates = dump(await client.list_resource_templates())
        summary["resourceTemplates"] = sorted(
            ({"uriTemplate": t["uriTemplate"], "name": t["name"]} for t in templates["resourceTemplates"]),
            key=lambda r: r["uriTemplate"],
        )
        if any(r["uri"] == PEER_RESOURCE_URI for r in summary["resources"]):
            read = dump(await client.read_resource(PEER_RESOURCE_URI))
            summary["read"] = {PEER_RESOURCE_URI: read["contents"]}

    if caps is not None and caps.prompts is not None:
        listed = dump(await client.list_prompts())
        summary["prompts"] = sorted(
            (
                {"name": p["name"], "arguments": sorted(a["name"] for a in p.get("arguments", []))}
                for p in listed["prompts"]
            ),
            key=lambda p: p["name"],
        )
        if any(p["name"] == PEER_PROMPT for p in summary["prompts"]):
            got = dump(await client.get_prompt(PEER_PROMPT, {"name": "Shadowcat"}))
            summary["prompt"] = {PEER_PROMPT: got["messages"]}

    return summary


# --------------------------------------------------------------------------
# Connecting, per SDK generation
# --------------------------------------------------------------------------


async def run_v2(params: StdioServerParameters | str, mode: str) -> dict[str, Any]:
    async with Client(
        params,
        mode=mode,
        sampling_callback=sampling_callback,
        elicitation_callback=elicitation_callback,
        message_handler=message_handler,
        logging_callback=logging_callback,
        # 2026-07-28 servers send log messages only to requests that opt in.
        log_level="info",
        # No response cache: every list call must really go over the wire.
        cache=None,
        client_info=types.Implementation(name="shadowcat-sdk-client", version=SDK_VERSION),
    ) as client:
        summary = await run_scenario(client, client.server_info, client.protocol_version, client.server_capabilities)
        summary["client"]["mode"] = mode
        return summary


async def run_v1(params: StdioServerParameters | str) -> dict[str, Any]:
    if isinstance(params, str) and params.startswith("sse:"):
        async with sse_client(params.removeprefix("sse:")) as (read, write):
            return await run_v1_session(read, write)
    if isinstance(params, str):
        async with streamablehttp_client(params) as (read, write, _):
            return await run_v1_session(read, write)
    async with stdio_client(params) as (read, write):
        return await run_v1_session(read, write)


async def run_v1_session(read: Any, write: Any) -> dict[str, Any]:
    async with ClientSession(
        read,
        write,
        sampling_callback=sampling_callback,
        elicitation_callback=elicitation_callback,
        message_handler=message_handler,
        logging_callback=logging_callback,
        client_info=types.Implementation(name="shadowcat-sdk-client", version=SDK_VERSION),
    ) as session:
        init = await session.initialize()
        return await run_scenario(session, init.serverInfo, str(init.protocolVersion), init.capabilities)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="Scripted MCP stdio client; prints a one-line normalized JSON summary.",
        usage="%(prog)s [--mode legacy|auto] [--timeout SECONDS] (--url URL | -- <server command> [args...])",
    )
    parser.add_argument(
        "--mode",
        choices=("legacy", "auto", "2026-07-28"),
        default="auto",
        help="connect mode for mcp>=2 (ignored with mcp 1.x): legacy, auto, or a pinned modern version; default: auto",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds; default: 30")
    parser.add_argument("--url", help="connect over Streamable HTTP to this URL instead of spawning a server")
    parser.add_argument(
        "--sse-url", help="connect over the 2024-11-05 HTTP+SSE transport to this URL (mcp 1.x only)"
    )
    parser.add_argument(
        "--no-sampling",
        action="store_true",
        help="don't call the sampling tool (servers without a back-channel: stateless or JSON-only HTTP)",
    )
    if "--" not in argv:
        opts = parser.parse_args(argv)
        if opts.url or opts.sse_url:
            return opts, []
        parser.error("missing '--' before the server command")
    split = argv.index("--")
    opts = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("missing server command after '--'")
    return opts, command


def _flatten(exc: BaseException) -> list[BaseException]:
    """Leaf exceptions of (possibly nested) exception groups from anyio task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _flatten(sub)]
    return [exc]


def main(argv: list[str]) -> int:
    global NO_SAMPLING
    opts, command = parse_args(argv)
    NO_SAMPLING = opts.no_sampling
    # Pass the whole environment through (the SDK default keeps only a small
    # allow-list), so a proxy under test sees e.g. its RUST_LOG / config vars.
    if opts.sse_url and SDK_MAJOR >= 2:
        print("sdk_client: --sse-url needs mcp 1.x", file=sys.stderr)
        return 2
    params: StdioServerParameters | str = (
        f"sse:{opts.sse_url}"
        if opts.sse_url
        else opts.url
        if opts.url
        else StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    )

    async def run() -> dict[str, Any]:
        with anyio.fail_after(opts.timeout):
            if SDK_MAJOR >= 2:
                return await run_v2(params, opts.mode)
            return await run_v1(params)

    try:
        summary = anyio.run(run)
    except BaseException as exc:  # noqa: BLE001 - report anything, never a traceback wall
        if isinstance(exc, KeyboardInterrupt):
            raise
        for leaf in _flatten(exc):
            if isinstance(leaf, TimeoutError):
                msg = f"timed out after {opts.timeout:g}s"
            elif isinstance(leaf, (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)):
                # 1.x surfaces a server that died / closed stdout as a bare stream error.
                msg = f"{type(leaf).__name__}: connection to the server was closed (did it exit? see its stderr)"
            else:
                msg = f"{type(leaf).__name__}: {leaf}"
            print(f"sdk_client (mcp {SDK_VERSION}): error: {msg}", file=sys.stderr)
        return 1

    sys.stdout.write(json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
