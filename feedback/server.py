"""The local labelling web page (``tokengym label --serve``): stdlib ThreadingHTTPServer on 127.0.0.1.

Routes: ``GET /`` (the page), ``GET /label.js``, ``GET /api/task?kind=score|rank|compare`` (the next
task with the progress count), ``POST /api/score|rank|compare`` (one submission, committed to the
store before the response is sent, so a killed server loses nothing that was acknowledged).

Security: the server binds to loopback only, and every request must carry a ``Host`` header naming
this server (``127.0.0.1:PORT`` or ``localhost:PORT``) - that defeats DNS rebinding - and, when a
browser sends one, a matching ``Origin`` (and no cross-site ``Sec-Fetch-Site``) - that defeats
cross-site form or fetch posts from other pages. POST bodies must be JSON.

Robustness: every malformed request (a missing, negative or non-numeric ``Content-Length``,
invalid UTF-8, JSON nested too deeply, a field of the wrong type) gets a 400 JSON answer naming the
field, and a client that stops sending mid-body times out instead of holding a handler. Ids must be
JSON integers (not ``true``, ``1.9`` or ``"21"``), and a ranking must order every candidate of its
task. Submissions are idempotent: repeating one changes nothing; a different answer to a task
already judged is a 409 unless the body asks for a revision (``"revise": true``).
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from .annotators import TaskQueue
from .errors import DuplicateJudgementError, FeedbackError
from .store import FeedbackStore

LOOPBACK = "127.0.0.1"
_STATIC = {"/": ("label.html", "text/html; charset=utf-8"), "/label.js": ("label.js", "text/javascript; charset=utf-8")}
_MAX_BODY = 1 << 20
_MAX_ID = 2**63 - 1
_DECIMAL_ID = re.compile(r"[1-9][0-9]{0,18}")  # a candidate id written as a JSON object key


class _BadRequest(Exception):
    """A malformed request: answered 400 with the field it concerns."""

    def __init__(self, field: str, message: str, status: int = HTTPStatus.BAD_REQUEST, close: bool = False) -> None:
        super().__init__(message)
        self.field, self.status, self.close = field, status, close


def _candidate_id(value: Any, field: str) -> int:
    # JSON true, 1.9, 1e400 and "21" are not ids; neither is an integer beyond SQLite's range.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_ID:
        raise _BadRequest(field, f"{field} must be a candidate id (a positive JSON integer), got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields(body: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest("body", f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(required) - {"revise"})
    if unknown:
        raise _BadRequest(unknown[0], f"unknown field {unknown[0]!r}; expected {', '.join(required)} (and revise)")
    for name in required:
        if name not in body:
            raise _BadRequest(name, f"missing field {name!r}")
    revise = body.get("revise", False)
    if not isinstance(revise, bool):
        raise _BadRequest("revise", f"revise must be true or false, got {_show(revise)}")
    return body


def _parse_scores(body: Any) -> tuple[dict[int, float], bool]:
    body = _fields(body, ("scores",))
    scores = body["scores"]
    if not isinstance(scores, dict) or not scores:
        raise _BadRequest("scores", "scores must be a non-empty JSON object {candidate id: score}")
    out: dict[int, float] = {}
    for key, value in scores.items():
        if not _DECIMAL_ID.fullmatch(key) or int(key) > _MAX_ID:
            raise _BadRequest("scores", f"scores: key {_show(key)} is not a candidate id (digits, no sign or zeros)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _BadRequest(f"scores.{key}", f"scores.{key} must be a finite number, got {_show(value)}")
        out[int(key)] = value
    return out, body.get("revise", False)


def _parse_ranking(body: Any) -> tuple[list[int], bool]:
    body = _fields(body, ("candidate_ids",))
    ids = body["candidate_ids"]
    if not isinstance(ids, list):
        raise _BadRequest("candidate_ids", f"candidate_ids must be a JSON list of ids, got {_show(ids)}")
    return [_candidate_id(c, f"candidate_ids[{i}]") for i, c in enumerate(ids)], body.get("revise", False)


def _parse_comparison(body: Any) -> tuple[int, int, str, bool]:
    body = _fields(body, ("candidate_a", "candidate_b", "outcome"))
    a, b = _candidate_id(body["candidate_a"], "candidate_a"), _candidate_id(body["candidate_b"], "candidate_b")
    outcome = body["outcome"]
    if outcome not in ("a", "b", "tie") or not isinstance(outcome, str):
        raise _BadRequest("outcome", f"outcome must be \"a\", \"b\" or \"tie\", got {_show(outcome)}")
    return a, b, outcome, body.get("revise", False)


def _static(name: str) -> bytes:
    return resources.files("tokengym.feedback").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds: a client that stalls mid-request releases its handler thread

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

    def _body(self) -> Any:
        """The request's JSON body; raises _BadRequest for anything malformed."""
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest("Transfer-Encoding", "chunked bodies are not accepted; send a Content-Length",
                              HTTPStatus.LENGTH_REQUIRED, close=True)
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _BadRequest("Content-Length", "a POST needs a Content-Length header", HTTPStatus.LENGTH_REQUIRED,
                              close=True)
        # Only plain digits: int() would accept " 12", "+1" and "1_0", and a negative length would read to EOF.
        if not (raw.isascii() and raw.isdigit()):
            raise _BadRequest("Content-Length", f"Content-Length must be a non-negative integer, got {raw!r}",
                              close=True)
        length = int(raw)
        if length > _MAX_BODY:
            raise _BadRequest("Content-Length", f"request body too large ({length} bytes; at most {_MAX_BODY})",
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE, close=True)
        data = self.rfile.read(length)
        if len(data) < length:
            raise _BadRequest("body", f"the body ended after {len(data)} of {length} bytes", close=True)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadRequest("body", f"the body is not valid UTF-8 (byte {exc.start})") from None
        try:
            return json.loads(text or "{}")
        except RecursionError:
            raise _BadRequest("body", "the body's JSON is nested too deeply") from None
        except ValueError as exc:
            raise _BadRequest("body", f"the body is not JSON: {exc}") from None

    def do_POST(self) -> None:  # noqa: N802
        if not self._guard():
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self.close_connection = True  # the unread body must not be taken for the next request
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "POST bodies must be application/json"})
            return
        q = self.server.queue
        routes = {
            "/api/score": lambda b: (lambda v, r: {"ids": q.submit_scores(v, revise=r)})(*_parse_scores(b)),
            "/api/rank": lambda b: (lambda ids, r: {"ids": [q.submit_ranking(ids, revise=r)]})(*_parse_ranking(b)),
            "/api/compare": lambda b: (lambda a, c, o, r: {"ids": [q.submit_comparison(a, c, o, revise=r)]})(
                *_parse_comparison(b)),
        }
        route = routes.get(urlparse(self.path).path)
        try:
            body = self._body()
        except _BadRequest as exc:
            self._bad_request(exc)
            return
        if route is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
        else:
            self._answer(lambda: route(body))

    def _bad_request(self, exc: _BadRequest) -> None:
        if exc.close:
            self.close_connection = True
        self._json(exc.status, {"error": str(exc), "type": "BadRequest", "field": exc.field})

    def _answer(self, fn: Any) -> None:
        """Run ``fn``: a refused submission is 400 (409 for a contradicting repeat) naming the problem;
        a bug is a 500 with the traceback on the server's stderr, never a dropped connection."""
        try:
            result = fn()
        except _BadRequest as exc:
            self._bad_request(exc)
        except DuplicateJudgementError as exc:
            self._json(HTTPStatus.CONFLICT, {"error": str(exc), "type": type(exc).__name__})
        except FeedbackError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc), "type": type(exc).__name__})
        except Exception as exc:  # noqa: BLE001 - the handler must answer whatever went wrong
            traceback.print_exc(file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}: {exc}",
                                                          "type": "InternalError"})
        else:
            self._json(HTTPStatus.OK, {"ok": True, **result})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    queue: TaskQueue
    annotator: str
    allowed_hosts: set[str]
    verbose: bool


class LabelServer:
    """Serves the labelling page for one annotator of one store. ``port=0`` picks a free port."""

    def __init__(self, store: FeedbackStore, queue: TaskQueue | None, annotator: str, port: int = 8765,
                 verbose: bool = False) -> None:
        """Binds the port at once (``queue`` may be set later, before serving, via :attr:`queue`)."""
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise FeedbackError(f"port must be an integer in 0-65535 (0 picks a free one), got {port!r}")
        try:
            self.httpd = _Server((LOOPBACK, port), _Handler)
        except OSError as exc:
            raise FeedbackError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}; choose another port "
                                "(0 picks a free one)") from exc
        self.port = self.httpd.server_address[1]
        self.httpd.queue, self.httpd.annotator, self.httpd.verbose = queue, annotator, verbose
        self.httpd.allowed_hosts = {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}
        self.store = store
        self._thread: threading.Thread | None = None

    @property
    def queue(self) -> TaskQueue | None:
        return self.httpd.queue

    @queue.setter
    def queue(self, queue: TaskQueue) -> None:
        self.httpd.queue = queue

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "LabelServer":
        """Serve from a background thread (tests, notebooks)."""
        # A short poll interval makes stop() return at once (the default waits up to 0.5 s).
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()
