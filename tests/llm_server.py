"""A minimal OpenAI-compatible chat server for the explainer tests: POST /v1/chat/completions answered by a real
model in-process (an adapter with ``chat``, e.g. the embedded SmolLM2-135M-Instruct), over real HTTP.

It records every request body, can fail the next N calls with HTTP 500 (``fail_next``), and caps max_tokens so
that CPU generation stays short. One generation at a time (a lock); the HTTP side is threaded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(self, adapter: Any, model: str = "smollm2-test", max_tokens_cap: int = 32):
        self.adapter, self.model, self.cap = adapter, model, max_tokens_cap
        self.requests: list[dict] = []  # every body received, failed ones included
        self.fail_next = 0
        self._lock, self._gen = threading.Lock(), threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    fail = server.fail_next > 0
                    server.fail_next -= int(fail)
                if fail:
                    return self._send(500, {"error": {"message": "injected failure"}})
                n = min(int(body.get("max_tokens") or server.cap), server.cap)
                with server._gen:
                    text, pt, ct = server.adapter.chat(body["messages"], max_new_tokens=n)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", server.model),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
