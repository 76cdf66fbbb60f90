"""An MCP client that authenticates with the Python SDK's own OAuth support (the
client_credentials grant): it is refused 401 by the gateway, finds the authorization server
from the Protected Resource Metadata the 401 names, gets a token there and calls a tool.

Usage: oauth_client.py URL ISSUER. Prints one JSON line: the tool's text and the session id.
"""

import json
import sys

import anyio
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


class Memory:
    """Tokens and client information kept in memory."""

    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


async def main(url: str, issuer: str) -> None:
    provider = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=Memory(),
        client_id="ci-bot",
        client_secret="not-checked-by-the-mock",
        scope="mcp:tools",
        issuer=issuer,
    )
    async with create_mcp_http_client(auth=provider) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("echo", {"text": "authorized"})
                print(json.dumps({"text": result.content[0].text}), flush=True)


anyio.run(main, sys.argv[1], sys.argv[2])
