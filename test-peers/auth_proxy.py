"""A transparent HTTP proxy that adds `Authorization: Bearer TOKEN` to every
request it forwards, for clients that cannot be given credentials (the
conformance suite connects without any). Headers, including Host and
Origin, pass through unchanged.

usage: auth_proxy.py LISTEN_PORT UPSTREAM_PORT TOKEN   (prints "ready")
"""
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN, UPSTREAM, TOKEN = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers.setdefault("Authorization", f"Bearer {TOKEN}")
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        streaming = (resp.getheader("content-type") or "").startswith("text/event-stream")
        if not streaming:
            data = resp.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()
            return
        # Event streams pass through as they come (chunked): a server's
        # request in the middle of a call must reach the client before the
        # call ends.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            conn.close()

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = forward


server = ThreadingHTTPServer(("127.0.0.1", LISTEN), Handler)
print("ready", flush=True)
server.serve_forever()
