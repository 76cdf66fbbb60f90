"""Many MCP sessions (Python SDK 1.x clients over Streamable HTTP) at once, each checking that
it gets only its own answers, progress and sampling requests. Made for a gateway that runs all
the sessions on one shared server process (`shadowcat reverse --share always`); the server is
tests/peers/sdk_server_v2.py.

    python share_client.py URL SESSIONS

1. SESSIONS sessions open at once; each calls `echo` with a text of its own and `work` with a
   number of steps of its own, all in flight together, and checks the answers and that the
   progress it got counts exactly its own steps.
2. Each session in turn calls `ask` (a sampling request from the server in the middle of the
   call): with one request in flight the gateway can tell whose it is; the sampling answer
   names the session, and the tool's result must be this session's answer.
3. An ambiguous one: session 0 calls `ask` and holds its sampling answer back; session 1 calls
   `ask` meanwhile. The server's request for session 1 comes while both have a call in flight:
   the gateway must refuse it (the call fails) and never hand it to either client. Then
   session 0's answer is released and its call must succeed with its own answer.

Prints one line of JSON (a summary) and exits 0 when every check held, 1 otherwise.
"""

from __future__ import annotations

import json
import sys

import anyio
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


class Failed(Exception):
    pass


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


class Peer:
    """One session and what reached it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sampled: list[str] = []
        self.hold: anyio.Event | None = None
        self.asked = anyio.Event()
        self.session: ClientSession | None = None

    async def sampling(self, context, params: types.CreateMessageRequestParams):
        question = "".join(
            m.content.text for m in params.messages if isinstance(m.content, types.TextContent)
        )
        self.sampled.append(question)
        self.asked.set()
        if self.hold is not None:
            await self.hold.wait()
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"answer of session {self.n}"),
            model="share-client",
        )


async def phase_one(peer: Peer) -> None:
    session = peer.session
    mine = f"session {peer.n} says hello"
    echoed = text_of(await session.call_tool("echo", {"text": mine}))
    if echoed != mine:
        raise Failed(f"session {peer.n} asked to echo {mine!r} and got {echoed!r}")
    steps = peer.n % 5 + 1
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    worked = text_of(
        await session.call_tool("work", {"steps": steps}, progress_callback=on_progress)
    )
    if worked != f"did {steps} steps":
        raise Failed(f"session {peer.n} asked for {steps} steps and got {worked!r}")
    if sorted(progress) != [float(s) for s in range(1, steps + 1)]:
        raise Failed(f"session {peer.n} ({steps} steps) got progress {progress}")


async def ask(peer: Peer, question: str) -> types.CallToolResult:
    return await peer.session.call_tool("ask", {"question": question})


async def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    peers = [Peer(n) for n in range(count)]
    summary: dict = {"sessions": count}
    async with anyio.create_task_group() as group:
        opened = anyio.Event()
        done = anyio.Event()
        ready = [0]

        async def run(peer: Peer) -> None:
            async with streamablehttp_client(url) as (read, write, _):
                async with ClientSession(read, write, sampling_callback=peer.sampling) as session:
                    await session.initialize()
                    peer.session = session
                    ready[0] += 1
                    if ready[0] == count:
                        opened.set()
                    await done.wait()

        for peer in peers:
            group.start_soon(run, peer)
        with anyio.fail_after(120):
            await opened.wait()
            async with anyio.create_task_group() as calls:
                for peer in peers:
                    calls.start_soon(phase_one, peer)
            summary["own_answers_and_progress"] = count
            for peer in peers:
                result = await ask(peer, f"question of session {peer.n}")
                if result.isError or text_of(result) != f"answer of session {peer.n}":
                    raise Failed(f"session {peer.n} asked and got {text_of(result)!r}")
                if peer.sampled != [f"question of session {peer.n}"]:
                    raise Failed(f"session {peer.n} was asked {peer.sampled}")
            summary["own_sampling"] = count
            first, second = peers[0], peers[1]
            first.hold = anyio.Event()
            first.asked = anyio.Event()
            first.sampled.clear()
            second.sampled.clear()
            held: dict = {}

            async def ask_held() -> None:
                held["result"] = await ask(first, "held question")

            async with anyio.create_task_group() as calls:
                calls.start_soon(ask_held)
                await first.asked.wait()
                try:
                    refused = await ask(second, "ambiguous question")
                    summary["ambiguous"] = {"isError": refused.isError, "text": text_of(refused)}
                    if not refused.isError:
                        raise Failed(f"the ambiguous request was answered: {text_of(refused)!r}")
                except Exception as e:  # the SDK raises McpError for a JSON-RPC error
                    if isinstance(e, Failed):
                        raise
                    summary["ambiguous"] = {"error": str(e)}
                first.hold.set()
            if second.sampled or first.sampled != ["held question"]:
                raise Failed(
                    f"misrouted: session 0 was asked {first.sampled}, session 1 {second.sampled}"
                )
            if text_of(held["result"]) != "answer of session 0":
                raise Failed(f"the held call got {text_of(held['result'])!r}")
            summary["held_then_answered"] = True
            others = [p.n for p in peers[2:] if len(p.sampled) != 1]
            if others:
                raise Failed(f"sessions {others} were sent sampling requests not theirs")
        done.set()
    print(json.dumps(summary, sort_keys=True), flush=True)


try:
    anyio.run(main)
except Failed as e:
    print(f"share_client: {e}", file=sys.stderr)
    sys.exit(1)
