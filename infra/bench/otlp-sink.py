#!/usr/bin/env python3
"""An OTLP/HTTP receiver for benchmarks: accepts every POST to /v1/traces, discards it, and on SIGINT or
SIGTERM prints how many exports and bytes it took. Standard library only.

    python3 infra/bench/otlp-sink.py [port]        (default 4318)
"""

import http.server
import signal
import sys
import threading

exports = 0
received = 0
lock = threading.Lock()


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the handler's name is fixed by http.server)
        global exports, received
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        with lock:
            exports += 1
            received += length
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def stop(*_):
    print(f"otlp-sink: {exports} exports, {received} bytes", flush=True)
    sys.exit(0)


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 4318
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
