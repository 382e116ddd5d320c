"""A stdio MCP server with the tools the official conformance suite's server
scenarios call (written from each scenario's stated requirements), so the
suite can run against the gateway fronting it (`/mcp/<server>`).

Built with the official MCP Python SDK's low-level server, for full control
of the listed schemas and the returned content.
"""
import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

# A 1x1 red PNG and a tiny WAV header with no samples.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
EMPTY = {"type": "object", "properties": {}}

TOOLS = [
    types.Tool(name="test_simple_text", description="Returns simple text", inputSchema=EMPTY),
    types.Tool(name="test_image_content", description="Returns an image", inputSchema=EMPTY),
    types.Tool(name="test_audio_content", description="Returns audio", inputSchema=EMPTY),
    types.Tool(name="test_embedded_resource", description="Returns an embedded resource", inputSchema=EMPTY),
    types.Tool(name="test_multiple_content_types", description="Returns text, image and resource", inputSchema=EMPTY),
    types.Tool(name="test_error_handling", description="Always fails", inputSchema=EMPTY),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        inputSchema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
]

server = Server("conformance-fixture")


@server.list_tools()
async def list_tools() -> list[types.Tool]:
    return TOOLS


@server.call_tool(validate_input=False)
async def call_tool(name: str, arguments: dict):
    if name == "test_simple_text":
        return [types.TextContent(type="text", text="This is a simple text response for testing.")]
    if name == "test_image_content":
        return [types.ImageContent(type="image", data=PNG, mimeType="image/png")]
    if name == "test_audio_content":
        return [types.AudioContent(type="audio", data=WAV, mimeType="audio/wav")]
    if name == "test_embedded_resource":
        return [types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
            uri="test://embedded-resource", mimeType="text/plain", text="This is an embedded resource content."))]
    if name == "test_multiple_content_types":
        return [
            types.TextContent(type="text", text="Multiple content types test:"),
            types.ImageContent(type="image", data=PNG, mimeType="image/png"),
            types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri="test://mixed-content-resource", mimeType="application/json", text='{"test":"data","value":123}')),
        ]
    if name == "test_error_handling":
        raise RuntimeError("This tool intentionally returns an error for testing")
    if name == "json_schema_2020_12_tool":
        return [types.TextContent(type="text", text=f"received {arguments}")]
    raise ValueError(f"Unknown tool: {name}")


async def main():
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
