"""Shared by the server peers: serve a Starlette app over HTTP on a free loopback port.

The socket is bound (port 0, or --port) before the server starts, and its port is printed on stdout as
``PORT <n>``, so a test learns the address without racing another process for it.
"""

from __future__ import annotations

import socket
import sys
from typing import Any


def serve(app: Any, port: int = 0) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


class MemoryEventStore:
    """An in-memory `EventStore` (mcp.server.streamable_http): every event kept, in order, so a
    stream can be replayed after any event id it handed out. Built on first use, so that this
    module does not import the SDK (the 1.x and 2.x peers share it)."""

    @staticmethod
    def create() -> Any:
        from mcp.server.streamable_http import EventMessage, EventStore

        class Store(EventStore):
            def __init__(self) -> None:
                self.events: list[tuple[str, str, Any]] = []

            async def store_event(self, stream_id: str, message: Any) -> str:
                event_id = str(len(self.events) + 1)
                self.events.append((event_id, stream_id, message))
                return event_id

            async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
                at = next((i for i, (e, _, _) in enumerate(self.events) if e == last_event_id), None)
                if at is None:
                    return None
                stream_id = self.events[at][1]
                for event_id, stream, message in self.events[at + 1 :]:
                    if stream == stream_id and message is not None:
                        await send_callback(EventMessage(message, event_id))
                return stream_id

        return Store()


def parse_args(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(description="MCP test server peer")
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP on a free port (default: stdio)")
    parser.add_argument("--stateless", action="store_true", help="HTTP: no sessions")
    parser.add_argument("--json", action="store_true", help="HTTP: answer with application/json, not SSE")
    parser.add_argument(
        "--legacy-sse", action="store_true", help="HTTP: the 2024-11-05 HTTP+SSE transport (GET /sse)"
    )
    parser.add_argument("--port", type=int, default=0, help="HTTP: this port (default: a free one)")
    parser.add_argument(
        "--resumable",
        action="store_true",
        help="HTTP: keep events (in memory) so streams resume with Last-Event-ID; add the tools `announce` and `cut`",
    )
    parser.add_argument(
        "--mirrored", action="store_true", help="add the tool `regional`, whose `region` is mirrored in Mcp-Param-Region"
    )
    return parser.parse_args(argv)
