"""A stand-in for Apple MLX's `mlx_lm.server` (which needs Apple silicon and
cannot run here): its API surface — `GET /v1/models`, `POST
/v1/chat/completions` streamed and not (with `stream_options.include_usage`),
`GET /health` — and, like it, no `/metrics`. Replies echo the last user
message word by word, one word every DELAY_MS.

usage: mlx_standin.py PORT MODEL [DELAY_MS]
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, MODEL = int(sys.argv[1]), sys.argv[2]
DELAY = (int(sys.argv[3]) if len(sys.argv) > 3 else 0) / 1000.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "mlx"}]})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_json(400, {"error": "bad json"})
            return
        if self.path != "/v1/chat/completions":
            self.send_json(404, {"error": "not found"})
            return
        if req.get("model") != MODEL:
            self.send_json(404, {"error": f"model {req.get('model')} not found"})
            return
        text = req["messages"][-1]["content"]
        words = ["echo:"] + text.split()
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(words),
                 "total_tokens": len(text.split()) + len(words)}
        created = int(time.time())
        if not req.get("stream"):
            time.sleep(DELAY * len(words))
            self.send_json(200, {"id": "chatcmpl-mlx", "object": "chat.completion", "created": created,
                                 "model": MODEL, "system_fingerprint": "mlx-standin",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": " ".join(words)}}],
                                 "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(value):
            data = b"data: " + (value if isinstance(value, bytes) else json.dumps(value).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            for i, w in enumerate(words):
                time.sleep(DELAY)
                event({"id": "chatcmpl-mlx", "object": "chat.completion.chunk", "created": created,
                       "model": MODEL, "system_fingerprint": "mlx-standin",
                       "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w},
                                    "finish_reason": None}]})
            event({"id": "chatcmpl-mlx", "object": "chat.completion.chunk", "created": created,
                   "model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (req.get("stream_options") or {}).get("include_usage"):
                event({"id": "chatcmpl-mlx", "object": "chat.completion.chunk", "created": created,
                       "model": MODEL, "choices": [], "usage": usage})
            event(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
