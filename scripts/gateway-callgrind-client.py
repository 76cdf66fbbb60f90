#!/usr/bin/env python3
"""One keep-alive MCP client for scripts/gateway-callgrind.sh: initialize, then N echo calls."""
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
c.request("POST", "/mcp", json.dumps({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"cg","version":"1"}}}), h)
r = c.getresponse(); sid = r.getheader("mcp-session-id"); r.read()
h["Mcp-Session-Id"] = sid; h["MCP-Protocol-Version"] = "2025-06-18"
c.request("POST", "/mcp", json.dumps({"jsonrpc":"2.0","method":"notifications/initialized"}), h); c.getresponse().read()
for i in range(n):
    c.request("POST", "/mcp", json.dumps({"jsonrpc":"2.0","id":i+1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"*64}}}), h)
    r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body)
print("ok", n)
