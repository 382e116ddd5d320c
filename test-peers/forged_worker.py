"""A forger on the LAN: it knows a cluster's public id (mDNS records carry
it) but not its secret, and answers a gateway's join challenge with an
announcement naming that cluster, its own certificate's fingerprint and a
made-up proof. Any other request it receives is counted and written to
CALLS_FILE (a gateway must never send it one).

usage: forged_worker.py PORT CERT_PEM KEY_PEM CLUSTER_ID CALLS_FILE
"""
import hashlib
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, cert, key, cluster, calls_file = sys.argv[1:6]
with open(cert) as f:
    der = ssl.PEM_cert_to_DER_cert(f.read())
fingerprint = hashlib.sha256(der).hexdigest()
calls = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_one(self, method):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if method == "POST" and self.path == "/cluster/v1/join":
            announcement = json.dumps({
                "cluster": cluster, "name": "forger", "kind": "lattice", "models": ["tiny"],
                "device": "cuda", "capacity": 64, "location": "on_prem", "labels": [],
                "fingerprint": fingerprint}, separators=(",", ":"))
            self.reply(200, {"announcement": announcement, "proof": "00" * 32})
            return
        calls.append(f"{method} {self.path}")
        with open(calls_file, "w") as f:
            json.dump(calls, f)
        self.reply(200, {"status": "ok"})

    def do_GET(self):
        self.handle_one("GET")

    def do_POST(self):
        self.handle_one("POST")


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"forged worker on https://127.0.0.1:{port}", flush=True)
server.serve_forever()
