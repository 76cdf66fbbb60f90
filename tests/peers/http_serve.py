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
    return parser.parse_args(argv)
