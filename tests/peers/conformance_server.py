"""Test peer: the server the official MCP conformance suite expects, built on mcp==2.3.0.

The suite (``@modelcontextprotocol/conformance``, pinned in ``tests/conformance/``)
drives a server through fixed scenarios and looks for fixed names: tools
``test_simple_text``, ``test_sampling``, ``test_reconnection`` ...; resources
``test://static-text`` ...; prompts ``test_simple_prompt`` ....  This module
provides exactly those, so the suite can be pointed at it directly (to prove the
fixture passes) or through Shadowcat (to prove the proxy does not break it).

Run it with the interpreter of a virtualenv that has ``mcp==2.3.0``:

    target/test-env/mcp-2.3.0/bin/python tests/peers/conformance_server.py          # stdio
    target/test-env/mcp-2.3.0/bin/python tests/peers/conformance_server.py --http   # HTTP

With ``--http`` it serves Streamable HTTP at ``http://127.0.0.1:<port>/mcp`` on a
free loopback port, printed first on stdout as ``PORT <n>``.  The HTTP app is
stateful (``Mcp-Session-Id``) for the handshake-era versions and answers
2026-07-28 requests per request (the SDK routes those itself).  An in-memory
event store and a short ``retry:`` make POST streams resumable, which the
2025-11-25 ``server-sse-polling`` scenario needs: ``test_reconnection`` closes its
own response stream mid-call and the result is only delivered after the client
comes back with ``GET`` + ``Last-Event-ID``.

Then, for example:

    python3 tests/peers/conformance_run.py --url http://127.0.0.1:<port>/mcp --spec-version 2025-11-25

Against conformance 0.2.0-alpha.12 this passes every check (SUCCESS, or INFO where
the suite only reports) at --spec-version 2025-11-25 and 2026-07-28, both in the
default "active" suite and with ``--suite all``.  Only ``--suite all`` runs the
"pending" scenarios (``server-sse-polling``, ``json-schema-2020-12``,
``http-header-validation``, ``http-custom-header-server-validation``, the
``input-required-result-*`` ones ...) and those introduced in 2026-07-28
(``server-stateless``, ``caching``, ``sep-2164-resource-not-found`` ...); the
fixture carries what they need too, including ``test_x_mcp_header`` (an
``x-mcp-header`` parameter) and the two probes ``server-stateless`` calls if
listed, ``test_streaming_elicitation`` and ``test_logging_tool``.

The names and payloads follow the suite's scenario descriptions (and the SDK's
own everything-server, which serves the same purpose upstream).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import warnings
from typing import Annotated, Any

from mcp.server import ServerRequestContext
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.tools import Tool
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

log = logging.getLogger("conformance_server")

# The handshake-era scenarios need logging, sampling and the like, which the SDK flags as
# deprecated since 2026-07-28.  Using them is the point here, so keep stderr quiet about it.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

# A 1x1 PNG and a tiny WAV: the suite only checks type, mimeType and that data is base64.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_TINY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="


# --------------------------------------------------------------------------------------
# Resumability: an in-memory event store
# --------------------------------------------------------------------------------------


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client that reconnects with Last-Event-ID gets the rest.

    Event ids count up from 1 across all sessions, so an id names exactly one
    event.  The SDK names a stream after the JSON-RPC request it answers (or the
    standalone GET stream); a replay sends the events of the same stream stored
    after the given id, skipping priming events (``message is None``: no data).

    Stream names are request ids, not scoped by session, so two sessions resuming
    concurrently-open streams with the same request id could see each other's
    events.  The suite runs scenarios one at a time; nothing is ever evicted.
    """

    def __init__(self) -> None:
        self._events: list[tuple[str, JSONRPCMessage | None]] = []  # event id n is self._events[n - 1]

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        self._events.append((stream_id, message))
        return str(len(self._events))

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        after = int(last_event_id) if last_event_id.isascii() and last_event_id.isdigit() else 0
        if not 1 <= after <= len(self._events):
            return None
        stream = self._events[after - 1][0]
        for event_id, (stream_id, message) in enumerate(self._events[after:], start=after + 1):
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, str(event_id)))
        return stream


# --------------------------------------------------------------------------------------
# The one tool whose inputSchema is written by hand (json-schema-2020-12 scenario)
# --------------------------------------------------------------------------------------

# Every keyword the scenario looks for: $schema, $defs (+ $anchor), additionalProperties,
# allOf/anyOf and if/then/else.  A function signature cannot produce this, so the
# registered Tool gets this schema in place of the generated one.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool() -> str:
    """Tool with JSON Schema 2020-12 features (only its inputSchema matters)."""
    return "json_schema_2020_12_tool"


_schema_tool = Tool.from_function(json_schema_2020_12_tool).model_copy(update={"parameters": SCHEMA_2020_12})

mcp = MCPServer(
    name="shadowcat-conformance-peer",
    version="2.3.0-peer",
    log_level="WARNING",
    tools=[_schema_tool],
)


# --------------------------------------------------------------------------------------
# Tools: fixed content
# --------------------------------------------------------------------------------------


@mcp.tool()
def test_simple_text() -> str:
    """Return one text block."""
    return "This is a simple text response for testing."


@mcp.tool()
def test_image_content() -> list[ImageContent]:
    """Return one image block."""
    return [ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]


@mcp.tool()
def test_audio_content() -> list[AudioContent]:
    """Return one audio block."""
    return [AudioContent(type="audio", data=WAV_TINY, mime_type="audio/wav")]


def _text_resource(uri: str, text: str, mime_type: str = "text/plain") -> EmbeddedResource:
    return EmbeddedResource(type="resource", resource=TextResourceContents(uri=uri, mime_type=mime_type, text=text))


@mcp.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Return one embedded text resource."""
    return [_text_resource("test://embedded-resource", "This is an embedded resource content.")]


@mcp.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Return text, image and an embedded resource together."""
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
        _text_resource("test://mixed-content-resource", '{"test": "data", "value": 123}', "application/json"),
    ]


@mcp.tool()
def test_error_handling() -> str:
    """Always fail: the failure comes back as a result with isError=true."""
    raise ToolError("This tool intentionally returns an error for testing")


@mcp.tool()
def test_x_mcp_header(
    region: Annotated[
        str,
        Field(description="Mirrored into the Mcp-Param-Region header", json_schema_extra={"x-mcp-header": "Region"}),
    ] = "<none>",
) -> str:
    """Echo `region`, a parameter the client mirrors into an Mcp-Param-Region header (2026-07-28)."""
    return f"region={region}"


# --------------------------------------------------------------------------------------
# Tools: notifications during a call, and closing the stream
# --------------------------------------------------------------------------------------


@mcp.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Send three log notifications while running."""
    for i, text in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
        if i:
            await asyncio.sleep(0.05)
        await ctx.info(text)
    return "Tool with logging executed successfully"


@mcp.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Report progress 0, 50 and 100 of 100; return the progress token."""
    for step in (0, 50, 100):
        if step:
            await asyncio.sleep(0.05)
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
    meta = ctx.request_context.meta or {}
    return str(meta.get("progress_token", meta.get("progressToken", 0)))


@mcp.tool()
async def test_reconnection(ctx: Context) -> str:
    """Close this call's SSE stream mid-call; the client gets the rest via Last-Event-ID.

    A log line goes out before the stream is closed (so the client has an event
    id to resume from) and another after, so the replay carries more than the result.
    Over stdio, or without an event store, closing is a no-op and the call just completes.
    """
    await ctx.info("Before disconnect")
    await ctx.close_sse_stream()
    await asyncio.sleep(0.2)
    await ctx.info("After reconnect")
    return "Reconnection test completed"


@mcp.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Add and remove a tool, then announce tools/list_changed (subscriptions/listen, 2026-07-28)."""
    mcp.add_tool(lambda: "dynamic", name="test_dynamic_tool", description="short-lived")
    mcp.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


def _dynamic_prompt() -> str:
    return "dynamic"


@mcp.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Add and remove a prompt, then announce prompts/list_changed (subscriptions/listen, 2026-07-28)."""
    mcp.add_prompt(Prompt.from_function(_dynamic_prompt, name="test_dynamic_prompt", description="short-lived"))
    mcp.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


# --------------------------------------------------------------------------------------
# Tools: asking the client (sampling, elicitation)
#
# These use the SDK's Resolve(...) injection, so the same tool works on both wires:
# a mid-call server->client request up to 2025-11-25, an InputRequiredResult round
# trip on 2026-07-28.
# --------------------------------------------------------------------------------------


def _sampling_for(prompt: str) -> Sample:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
    return Sample(messages=[message], max_tokens=100)


@mcp.tool()
async def test_sampling(prompt: str, answer: Annotated[CreateMessageResult, Resolve(_sampling_for)]) -> str:
    """Ask the client's LLM `prompt` (sampling/createMessage) and return its answer."""
    text = answer.content.text if isinstance(answer.content, TextContent) else "No response"
    return f"LLM response: {text}"


def _outcome(result: ElicitationResult[Any]) -> tuple[str, str]:
    """(action, JSON of what the user entered) for an elicitation outcome."""
    if isinstance(result, AcceptedElicitation):
        return "accept", result.data.model_dump_json()
    return result.action, "{}"


class FreeText(BaseModel):
    response: str = Field(description="User's response")


def _ask_free_text(message: str) -> Elicit[FreeText]:
    return Elicit(message, FreeText)


@mcp.tool()
async def test_elicitation(
    message: str, answer: Annotated[ElicitationResult[FreeText], Resolve(_ask_free_text)]
) -> str:
    """Ask the user `message` (elicitation/create) and report what they did."""
    action, content = _outcome(answer)
    return f"User response: action={action}, content={content}"


class WithDefaults(BaseModel):
    """SEP-1034: a default for every primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active", description="User status", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    verified: bool = Field(default=True, description="Verification status")


def _ask_with_defaults() -> Elicit[WithDefaults]:
    return Elicit("Please provide user information", WithDefaults)


@mcp.tool()
async def test_elicitation_sep1034_defaults(
    answer: Annotated[ElicitationResult[WithDefaults], Resolve(_ask_with_defaults)],
) -> str:
    """Elicit a form whose fields all carry defaults (SEP-1034)."""
    action, content = _outcome(answer)
    return f"Elicitation result: action={action}, content={content}"


def _choice(const: str, title: str) -> dict[str, str]:
    return {"const": const, "title": title}


class EnumVariants(BaseModel):
    """SEP-1330: the five ways to write an enum in an elicitation form."""

    untitledSingle: str = Field(
        description="Plain enum", json_schema_extra={"enum": ["option1", "option2", "option3"]}
    )
    titledSingle: str = Field(
        description="Enum with titles (oneOf)",
        json_schema_extra={
            "oneOf": [
                _choice("value1", "First Option"),
                _choice("value2", "Second Option"),
                _choice("value3", "Third Option"),
            ]
        },
    )
    legacyEnum: str = Field(
        description="Enum with enumNames (deprecated form)",
        json_schema_extra={"enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
    )
    untitledMulti: list[str] = Field(
        description="Multi-select, plain",
        json_schema_extra={"items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titles (anyOf)",
        json_schema_extra={
            "items": {
                "anyOf": [
                    _choice("value1", "First Choice"),
                    _choice("value2", "Second Choice"),
                    _choice("value3", "Third Choice"),
                ]
            }
        },
    )


def _ask_enum_variants() -> Elicit[EnumVariants]:
    return Elicit("Please select values using different enum schema types", EnumVariants)


@mcp.tool()
async def test_elicitation_sep1330_enums(
    answer: Annotated[ElicitationResult[EnumVariants], Resolve(_ask_enum_variants)],
) -> str:
    """Elicit a form using every enum variant (SEP-1330)."""
    action, content = _outcome(answer)
    return f"Elicitation completed: action={action}, content={content}"


def _ask_anything() -> Elicit[FreeText]:
    return Elicit("Anything to add?", FreeText)


@mcp.tool()
async def test_streaming_elicitation(
    answer: Annotated[ElicitationResult[FreeText], Resolve(_ask_anything)],
) -> str:
    """Elicit mid-call.  On 2026-07-28 this must come back as an InputRequiredResult, never as
    an independent elicitation/create request on the response stream (server-stateless checks it)."""
    action, content = _outcome(answer)
    return f"Streaming elicitation: action={action}, content={content}"


@mcp.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Log while running.  On 2026-07-28 the log must be dropped unless the request's _meta set a
    logLevel (server-stateless checks it)."""
    await ctx.info("test_logging_tool ran")
    return "logged"


@mcp.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Fail with a JSON-RPC error (not isError) unless the client declared `sampling`."""
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared sampling capability; proceeding."


# --------------------------------------------------------------------------------------
# Tools: InputRequiredResult written out by hand (SEP-2322, 2026-07-28)
#
# Each tool returns an InputRequiredResult on the first round and its final answer
# once the client retries with the requested inputs.  ctx.input_responses holds the
# answers by key; ctx.request_state is the opaque string echoed back (the SDK seals
# it on the way out and rejects a tampered echo on the way in).
# --------------------------------------------------------------------------------------


def _form(message: str, field: str, kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _form_value(answer: object, field: str, default: str = "?") -> Any:
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(field, default)
    return default


@mcp.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """One round: ask the user's name by elicitation."""
    answers = ctx.input_responses or {}
    if "user_name" not in answers:
        return InputRequiredResult(input_requests={"user_name": _form("What is your name?", "name")})
    return f"Hello, {_form_value(answers['user_name'], 'name', 'stranger')}!"


@mcp.tool()
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """One round: ask the client's LLM a question."""
    answers = ctx.input_responses or {}
    if "capital_question" not in answers:
        return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?", 100)})
    answer = answers["capital_question"]
    text = answer.content.text if isinstance(answer, CreateMessageResult) and answer.content.type == "text" else "?"
    return f"Model said: {text}"


@mcp.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """One round: ask for the client's roots."""
    answers = ctx.input_responses or {}
    if "client_roots" not in answers:
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
    answer = answers["client_roots"]
    return f"Client exposed {len(answer.roots) if isinstance(answer, ListRootsResult) else 0} root(s)."


@mcp.tool()
async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """One round whose requestState must come back unchanged."""
    if "confirm" in (ctx.input_responses or {}) and ctx.request_state == "request-state-nonce":
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": _form("Please confirm", "ok", "boolean")}, request_state="request-state-nonce"
    )


@mcp.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """One round asking for elicitation, sampling and roots at once."""
    wanted = {
        "user_name": _form("What is your name?", "name"),
        "greeting": _sample("Generate a greeting", 50),
        "client_roots": ListRootsRequest(),
    }
    if wanted.keys() <= (ctx.input_responses or {}).keys():
        return "All inputs received."
    return InputRequiredResult(input_requests=wanted, request_state="multiple-inputs")


@mcp.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds: name, then colour, then the answer; requestState carries the progress."""
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    answers = ctx.input_responses or {}
    if state["round"] == 1 and "step1" in answers:
        return InputRequiredResult(
            input_requests={"step2": _form("Step 2: What is your favorite color?", "color")},
            request_state=json.dumps({"round": 2, "name": _form_value(answers["step1"], "name", None)}),
        )
    if state["round"] == 2 and "step2" in answers:
        return f"{state.get('name')} likes {_form_value(answers['step2'], 'color', None)}."
    # First round, or an answer that does not fit the state: (re)start.
    return InputRequiredResult(
        input_requests={"step1": _form("Step 1: What is your name?", "name")}, request_state=json.dumps({"round": 1})
    )


@mcp.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Round trip whose requestState the suite tampers with; the SDK must reject the forgery."""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _form("Please confirm", "ok", "boolean")}, request_state="round-1"
        )
    return f"state-ok: {ctx.request_state}"


@mcp.tool()
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Ask only for what the client said it supports (sampling and/or elicitation)."""
    caps = ctx.client_capabilities
    wanted: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        wanted["sample"] = _sample("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        wanted["ask"] = _form("What is your name?", "name")
    return InputRequiredResult(input_requests=wanted, request_state="capability-gated")


# --------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------


@mcp.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    """A fixed text resource."""
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A fixed binary resource (a PNG)."""
    return base64.b64decode(PNG_1X1)


@mcp.resource("test://template/{id}/data", mime_type="application/json")
def template_data(id: str) -> str:
    """A resource template: the id is substituted into the JSON body."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource("test://watched-resource", mime_type="text/plain")
def watched() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------


def _user(content: TextContent | ImageContent | EmbeddedResource) -> UserMessage:
    return UserMessage(role="user", content=content)


@mcp.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A prompt with no arguments."""
    return [_user(TextContent(type="text", text="This is a simple prompt for testing."))]


@mcp.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with two required arguments."""
    return [_user(TextContent(type="text", text=f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]


@mcp.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt that embeds the resource named by `resourceUri`."""
    return [
        _user(_text_resource(resourceUri, "Embedded resource content for testing.")),
        _user(TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@mcp.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt carrying an image."""
    return [
        _user(ImageContent(type="image", data=PNG_1X1, mime_type="image/png")),
        _user(TextContent(type="text", text="Please analyze the image above.")),
    ]


@mcp.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """prompts/get answering with an InputRequiredResult first (SEP-2322 on a non-tool request)."""
    answers = ctx.input_responses or {}
    if "user_context" not in answers:
        return InputRequiredResult(
            input_requests={"user_context": _form("What context should the prompt use?", "context")}
        )
    text = _form_value(answers["user_context"], "context")
    return [_user(TextContent(type="text", text=f"Use the following context: {text}"))]


# --------------------------------------------------------------------------------------
# Methods MCPServer has no decorator for: logging/setLevel, resources/(un)subscribe.
# Registering them also makes the server advertise `logging` and `resources.subscribe`.
# --------------------------------------------------------------------------------------

subscribed: set[str] = set()


async def _set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
    log.info("client asked for log level %s", params.level)
    return EmptyResult()


async def _subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
    subscribed.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
    subscribed.discard(str(params.uri))
    return EmptyResult()


_lowlevel = mcp._lowlevel_server  # no public hook for these three yet
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)


@mcp.completion()
async def complete(ref: Any, argument: Any, context: Any) -> Completion:
    """completion/complete: the suite only needs a well-formed (here empty) answer."""
    return Completion(values=[], total=0, has_more=False)


# --------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from http_serve import parse_args, serve

    args = parse_args(argv)
    if args.legacy_sse:
        sys.exit("conformance_server: the suite speaks Streamable HTTP only; --legacy-sse is not offered")
    if args.http:
        app = mcp.streamable_http_app(
            json_response=args.json,
            stateless_http=args.stateless,
            event_store=None if args.stateless else MemoryEventStore(),
            retry_interval=100,  # ms, sent as `retry:` in each POST stream's priming event
        )
        serve(app, args.port)
    else:
        mcp.run("stdio")


if __name__ == "__main__":
    main(sys.argv[1:])
