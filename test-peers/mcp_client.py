"""A real MCP client (the official Python SDK) against a Lattice gateway.

usage: mcp_client.py URL TOKEN CALLS_JSON
CALLS_JSON is a list of [tool, arguments] pairs. Prints one JSON object: the
protocol version, the listed tool names and each call's result.
"""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


async def main(url, token, calls):
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            results = []
            for tool, arguments in calls:
                result = await session.call_tool(tool, arguments)
                results.append(result.model_dump(mode="json", exclude_none=True))
            print(json.dumps({
                "protocolVersion": init.protocolVersion,
                "server": init.serverInfo.name,
                "tools": [t.name for t in tools.tools],
                "results": results,
            }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
