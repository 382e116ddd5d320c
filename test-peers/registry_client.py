"""A registry client written from the official MCP registry API's documentation
(GET /v0.1/servers with limit and cursor, following metadata.nextCursor;
GET /v0.1/servers/{URL-encoded name}/versions/{version}), with the Python
standard library only: it lists every server, then fetches each one's latest
version, and prints what it saw as one JSON line.

    python registry_client.py http://127.0.0.1:8300 [page size]
"""
import json
import sys
import urllib.parse
import urllib.request


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def main():
    base = sys.argv[1].rstrip("/")
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    listed, pages, cursor = [], 0, None
    while True:
        query = {"limit": str(limit)}
        if cursor:
            query["cursor"] = cursor
        page = get(f"{base}/v0.1/servers?{urllib.parse.urlencode(query)}")
        pages += 1
        for item in page["servers"]:
            s = item["server"]
            listed.append(f'{s["name"]}@{s["version"]}')
        cursor = page.get("metadata", {}).get("nextCursor")
        if not cursor:
            break
    latest = {}
    for name in sorted({n.split("@")[0] for n in listed}):
        quoted = urllib.parse.quote(name, safe="")
        item = get(f"{base}/v0.1/servers/{quoted}/versions/latest")
        meta = item["server"].get("_meta", {}).get("io.modelcontextprotocol.registry/publisher-provided", {})
        latest[name] = {
            "version": item["server"]["version"],
            "isLatest": item["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"],
            "signed": "dev.lattice/signature" in meta,
            "tools": len(meta.get("dev.lattice", {}).get("tools", [])),
        }
    print(json.dumps({"pages": pages, "listed": listed, "latest": latest}))


if __name__ == "__main__":
    main()
