"""A small MCP server for the tests, built with the ``mcp`` SDK (``MCPServer``, once FastMCP).

    python tests/tools/mcp_server.py --transport streamable-http|sse --port PORT

Streamable HTTP serves ``/mcp``; SSE serves ``/sse`` (or ``--sse-path``; messages on ``/messages/``). Its tools:
``add``, ``secret_code`` (a fact no model knows), ``lookup`` (read-only), ``wipe`` (destructive),
``fail`` (an error result), ``slow`` (sleeps) and ``whoami`` (the request headers it got).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("midtier-test", instructions="Test tools for midtier.")


@server.tool(description="Add two integers and return the sum.")
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Return the secret code of a project, given its name.")
def secret_code(project: str) -> str:
    return f"The secret code of project {project} is {len(project) * 1111 + 7}-ZETA."


@server.tool(description="Look up a word in the dictionary.", annotations=ToolAnnotations(read_only_hint=True))
def lookup(word: str) -> str:
    return f"{word}: a word."


@server.tool(description="Delete every record.", annotations=ToolAnnotations(destructive_hint=True))
def wipe() -> str:
    return "wiped"


@server.tool(description="Always fails.")
def fail(message: str) -> str:
    raise ValueError(f"failing as asked: {message}")


@server.tool(description="Sleep for some seconds.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "awake"


@server.tool(description="Report the HTTP headers of this request.")
def whoami(ctx: Context) -> str:
    request: Any = ctx.request_context.request
    headers = dict(request.headers) if request is not None else {}
    return json.dumps({k: v for k, v in headers.items() if k in ("authorization", "x-test")})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sse-path", default="/sse")
    args = parser.parse_args()
    if args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port, sse_path=args.sse_path)
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
