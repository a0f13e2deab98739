"""A tiny MCP server for the MCP client tests, over stdio or streamable HTTP.

Run: ``python tests/support/mcp_server.py stdio`` or ``... http <port>`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import os
import sys

from fastmcp import FastMCP
from fastmcp.exceptions import ToolError

server = FastMCP("agentcluster-test")


@server.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool
def fail(reason: str) -> str:
    """Always fail with the given reason."""
    raise ToolError(f"failed on purpose: {reason}")


@server.tool
async def sleep(seconds: float) -> str:
    """Sleep for the given number of seconds (lets a test hit a call timeout)."""
    await asyncio.sleep(seconds)
    return "slept"


@server.tool
def server_pid() -> int:
    """The process id of this server (lets a test kill it)."""
    return os.getpid()


def main(argv: list[str]) -> None:
    """Serve over the transport named in ``argv``."""
    if argv[:1] == ["stdio"]:
        server.run("stdio", show_banner=False)
    elif len(argv) == 2 and argv[0] == "http":
        server.run(
            "http", show_banner=False, host="127.0.0.1", port=int(argv[1]), log_level="warning"
        )
    else:
        raise SystemExit("usage: mcp_server.py stdio | http <port>")


if __name__ == "__main__":
    main(sys.argv[1:])
