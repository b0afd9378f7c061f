"""A real OpenAI-compatible chat endpoint on 127.0.0.1 with a scripted behaviour, for judge tests."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    """A real OpenAI-compatible endpoint on 127.0.0.1 with a scripted behaviour."""

    def __init__(self, behaviour):
        self.behaviour, self.requests, self.lock = behaviour, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints: no new connection and thread per request
            disable_nagle_algorithm = True  # else headers and body, sent apart, wait out a 40 ms delayed ACK

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:  # handlers run in threads: number the requests one at a time
                    outer.requests.append(
                        {"auth": self.headers.get("Authorization"), "body": body, "time": time.monotonic()}
                    )
                    n = len(outer.requests)
                status, payload, *headers = outer.behaviour(body["messages"][0]["content"], n)
                if status is None:  # no answer: hang up after 2 s
                    time.sleep(2)
                    self.close_connection = True
                    return
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers[0] if headers else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def answer(letter):
    return 200, {"choices": [{"message": {"content": letter}}]}


def prefers_longer(content, n):
    a = content.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
    b = content.split("[Response B]\n")[1].split("\n\nWhich response")[0]
    return answer("A" if len(a) >= len(b) else "B")


def judge_servers():
    """Yields ``start(behaviour) -> JudgeServer``; every server started is shut down afterwards."""
    servers = []

    def start(behaviour):
        s = JudgeServer(behaviour)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
