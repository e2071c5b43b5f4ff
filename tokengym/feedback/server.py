"""The local labelling web page (``tokengym label --serve``): stdlib ThreadingHTTPServer on 127.0.0.1.

Routes: ``GET /`` (the page), ``GET /label.js``, ``GET /api/task?kind=score|rank|compare`` (the next
task with the progress count), ``POST /api/score|rank|compare`` (one submission, committed to the
store before the response is sent, so a killed server loses nothing that was acknowledged).

Security: the server binds to loopback only, and every request must carry a ``Host`` header naming
this server (``127.0.0.1:PORT`` or ``localhost:PORT``) - that defeats DNS rebinding - and, when a
browser sends one, a matching ``Origin`` (and no cross-site ``Sec-Fetch-Site``) - that defeats
cross-site form or fetch posts from other pages. POST bodies must be JSON.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from .annotators import TaskQueue
from .errors import FeedbackError
from .store import FeedbackStore

LOOPBACK = "127.0.0.1"
_STATIC = {"/": ("label.html", "text/html; charset=utf-8"), "/label.js": ("label.js", "text/javascript; charset=utf-8")}
_MAX_BODY = 1 << 20


def _static(name: str) -> bytes:
    return resources.files("tokengym.feedback").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    # ------------------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode())

    def _local_request(self) -> str | None:
        """None if the request may proceed, else why it is refused."""
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts:
            return f"Host header {host!r} is not this local server"
        origin = self.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in self.server.allowed_hosts}:
            return f"Origin {origin!r} is not this local server"
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request"
        return None

    def _guard(self) -> bool:
        reason = self._local_request()
        if reason:
            self._json(HTTPStatus.FORBIDDEN, {"error": reason, "type": "Forbidden"})
            return False
        return True

    # -------------------------------------------------------------------------------- routes
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._guard():
            return
        url = urlparse(self.path)
        if url.path in _STATIC:
            name, ctype = _STATIC[url.path]
            self._send(HTTPStatus.OK, _static(name), ctype)
        elif url.path == "/api/task":
            kind = parse_qs(url.query).get("kind", [self.server.queue.kinds[0]])[0]
            self._answer(lambda: self._task(kind))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path}"})

    def _task(self, kind: str) -> dict[str, Any]:
        q = self.server.queue
        task = q.next(kind)
        done, total = q.progress(kind)
        lo, hi = q.store.score_range
        return {"task": task.to_json() if task else None, "progress": {"done": done, "total": total},
                "kinds": list(q.kinds), "score_range": [lo, hi], "annotator": self.server.annotator}

    def do_POST(self) -> None:  # noqa: N802
        if not self._guard():
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "POST bodies must be application/json"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {exc}", "type": "BadRequest"})
            return
        q = self.server.queue
        routes = {
            "/api/score": lambda: {"ids": q.submit_scores({int(k): v for k, v in body["scores"].items()})},
            "/api/rank": lambda: {"ids": [q.submit_ranking([int(c) for c in body["candidate_ids"]])]},
            "/api/compare": lambda: {"ids": [q.submit_comparison(int(body["candidate_a"]), int(body["candidate_b"]),
                                                                 str(body["outcome"]))]},
        }
        route = routes.get(urlparse(self.path).path)
        if route is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
        else:
            self._answer(route)

    def _answer(self, fn: Any) -> None:
        """Run ``fn``; bad input becomes 400 naming the exception, anything else propagates as 500."""
        try:
            self._json(HTTPStatus.OK, {"ok": True, **fn()})
        except FeedbackError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc), "type": type(exc).__name__})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"malformed request: {exc!r}", "type": "BadRequest"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    queue: TaskQueue
    annotator: str
    allowed_hosts: set[str]
    verbose: bool


class LabelServer:
    """Serves the labelling page for one annotator of one store. ``port=0`` picks a free port."""

    def __init__(self, store: FeedbackStore, queue: TaskQueue, annotator: str, port: int = 8765,
                 verbose: bool = False) -> None:
        self.httpd = _Server((LOOPBACK, port), _Handler)
        self.port = self.httpd.server_address[1]
        self.httpd.queue, self.httpd.annotator, self.httpd.verbose = queue, annotator, verbose
        self.httpd.allowed_hosts = {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}
        self.store = store
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "LabelServer":
        """Serve from a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()
