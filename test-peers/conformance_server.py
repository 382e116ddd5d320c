"""An MCP server (stdio, or streamable HTTP with `--http PORT`) with the
tools, prompts and resources the official conformance suite's server
scenarios use (written from each scenario's
stated requirements), so the suite can run against the gateway fronting it
(`/mcp/<server>`).

Built with the official MCP Python SDK's low-level server, for full control
of the listed schemas and the returned content.
"""
import base64
import re

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.helper_types import ReadResourceContents
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
    types.Tool(name="test_tool_with_progress", description="Reports progress 0, 50, 100", inputSchema=EMPTY),
    types.Tool(name="test_tool_with_logging", description="Logs three messages while it runs", inputSchema=EMPTY),
    types.Tool(name="test_sampling", description="Asks the client's LLM",
               inputSchema={"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}),
    types.Tool(name="test_elicitation", description="Asks the user",
               inputSchema={"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
    types.Tool(name="test_elicitation_sep1034_defaults", description="Asks with defaults", inputSchema=EMPTY),
    types.Tool(name="test_elicitation_sep1330_enums", description="Asks with every enum form", inputSchema=EMPTY),
    types.Tool(name="test_update_watched_resource",
               description="Says test://watched-resource changed, if anyone subscribed", inputSchema=EMPTY),
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
    if name == "test_tool_with_progress":
        ctx = server.request_context
        token = ctx.meta.progressToken if ctx.meta else None
        for step in (0, 50, 100):
            if token is not None:
                await ctx.session.send_progress_notification(token, step, 100)
            if step < 100:
                await anyio.sleep(0.05)
        return [types.TextContent(type="text", text="Progress test completed")]
    if name == "test_tool_with_logging":
        session = server.request_context.session
        for i, text in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
            if i:
                await anyio.sleep(0.05)
            await session.send_log_message(level="info", data=text, logger="conformance")
        return [types.TextContent(type="text", text="Logging test completed")]
    if name == "test_sampling":
        result = await server.request_context.session.create_message(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=arguments["prompt"]))],
            max_tokens=100,
        )
        text = result.content.text if isinstance(result.content, types.TextContent) else str(result.content)
        return [types.TextContent(type="text", text=f"LLM response: {text}")]
    if name in ELICITATIONS:
        message, schema = ELICITATIONS[name](arguments)
        result = await server.request_context.session.elicit(message, schema)
        prefix = "User response" if name == "test_elicitation" else "Elicitation completed"
        return [types.TextContent(type="text", text=f"{prefix}: action={result.action}, content={result.content}")]
    if name == "test_update_watched_resource":
        if WATCHED not in SUBSCRIBED:
            return [types.TextContent(type="text", text="not subscribed")]
        await server.request_context.session.send_resource_updated(WATCHED)
        return [types.TextContent(type="text", text="update sent")]
    if name == "test_error_handling":
        raise RuntimeError("This tool intentionally returns an error for testing")
    if name == "json_schema_2020_12_tool":
        return [types.TextContent(type="text", text=f"received {arguments}")]
    raise ValueError(f"Unknown tool: {name}")


PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt"),
    types.Prompt(name="test_prompt_with_arguments", description="A prompt with arguments", arguments=[
        types.PromptArgument(name="arg1", description="First test argument", required=True),
        types.PromptArgument(name="arg2", description="Second test argument", required=True),
    ]),
    types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt embedding a resource", arguments=[
        types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True),
    ]),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]


def user(content):
    return types.PromptMessage(role="user", content=content)


@server.list_prompts()
async def list_prompts() -> list[types.Prompt]:
    return PROMPTS


@server.get_prompt()
async def get_prompt(name: str, arguments: dict | None) -> types.GetPromptResult:
    args = arguments or {}
    if name == "test_simple_prompt":
        messages = [user(types.TextContent(type="text", text="This is a simple prompt for testing."))]
    elif name == "test_prompt_with_arguments":
        text = f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
        messages = [user(types.TextContent(type="text", text=text))]
    elif name == "test_prompt_with_embedded_resource":
        messages = [
            user(types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri=args.get("resourceUri", "test://example-resource"), mimeType="text/plain",
                text="Embedded resource content for testing."))),
            user(types.TextContent(type="text", text="Please process the embedded resource above.")),
        ]
    elif name == "test_prompt_with_image":
        messages = [
            user(types.ImageContent(type="image", data=PNG, mimeType="image/png")),
            user(types.TextContent(type="text", text="Please analyze the image above.")),
        ]
    else:
        raise ValueError(f"Unknown prompt: {name}")
    return types.GetPromptResult(messages=messages)


@server.list_resources()
async def list_resources() -> list[types.Resource]:
    return [
        types.Resource(uri="test://static-text", name="static-text", description="A static text resource", mimeType="text/plain"),
        types.Resource(uri="test://static-binary", name="static-binary", description="A static binary resource", mimeType="image/png"),
    ]


@server.list_resource_templates()
async def list_resource_templates() -> list[types.ResourceTemplate]:
    return [types.ResourceTemplate(uriTemplate="test://template/{id}/data", name="template",
                                   description="Data for an id", mimeType="application/json")]


@server.read_resource()
async def read_resource(uri):
    uri = str(uri)
    if uri == "test://static-text":
        return [ReadResourceContents(content="This is the content of the static text resource.", mime_type="text/plain")]
    if uri == "test://static-binary":
        return [ReadResourceContents(content=base64.b64decode(PNG), mime_type="image/png")]
    m = re.fullmatch(r"test://template/([^/]+)/data", uri)
    if m:
        i = m.group(1)
        return [ReadResourceContents(content=f'{{"id":"{i}","templateTest":true,"data":"Data for ID: {i}"}}',
                                     mime_type="application/json")]
    raise ValueError(f"Resource not found: {uri}")


# Elicitation tools: arguments → (message, requested schema).
ELICITATIONS = {
    "test_elicitation": lambda a: (a["message"], {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }),
    "test_elicitation_sep1034_defaults": lambda a: ("Please review your details", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "default": "John Doe"},
            "age": {"type": "integer", "default": 30},
            "score": {"type": "number", "default": 95.5},
            "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "default": True},
        },
    }),
    "test_elicitation_sep1330_enums": lambda a: ("Pick your options", {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                           "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"},
                {"const": "value2", "title": "Second Choice"},
                {"const": "value3", "title": "Third Choice"}]}},
        },
    }),
}

WATCHED = "test://watched-resource"
# The URIs this server's one client (the gateway) subscribed to.
SUBSCRIBED = set()


@server.subscribe_resource()
async def subscribe_resource(uri):
    SUBSCRIBED.add(str(uri))


@server.unsubscribe_resource()
async def unsubscribe_resource(uri):
    SUBSCRIBED.discard(str(uri))


@server.set_logging_level()
async def set_logging_level(level):
    # The gateway asks for every message and filters per client session.
    return None


@server.completion()
async def complete(ref, argument, context):
    words = ["paris", "park", "party", "test", "testing"]
    values = [w for w in words if w.startswith(argument.value)]
    return types.Completion(values=values, total=len(values), hasMore=False)


def options():
    opts = Server.create_initialization_options(server)
    # The SDK's low-level server never advertises subscriptions, though it
    # routes them to the handlers above.
    opts.capabilities.resources.subscribe = True
    return opts


async def main():
    async with stdio_server() as (read, write):
        await server.run(read, write, options())


def serve_http(port):
    """Streamable HTTP at http://127.0.0.1:PORT/mcp/ (prints "ready")."""
    import contextlib

    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.routing import Mount

    server.create_initialization_options = lambda *a, **k: options()
    manager = StreamableHTTPSessionManager(app=server)

    async def handle(scope, receive, send):
        await manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with manager.run():
            print("ready", flush=True)
            yield

    app = Starlette(routes=[Mount("/mcp", app=handle)], lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    import sys

    if "--http" in sys.argv:
        serve_http(int(sys.argv[sys.argv.index("--http") + 1]))
    else:
        anyio.run(main)
