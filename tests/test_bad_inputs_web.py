"""The labelling server fed malformed requests: each gets a 400 JSON answer naming the field, at once,
never a dropped connection or a handler left blocked, and the store is unchanged. Submissions are
one judgement per (annotator, task): a repeated POST changes nothing, a contradicting one is a 409
unless it is an explicit revision."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from test_feedback_helpers import small_store
from tokengym.feedback.annotators import TaskQueue
from tokengym.feedback.server import LabelServer


@pytest.fixture()
def server(tmp_path: Path):
    store = small_store(tmp_path / "fb.sqlite")  # 2 prompts x 3 candidates: ids 1-3 and 4-6
    srv = LabelServer(store, TaskQueue(store, store.add_annotator("carol")), "carol", port=0).start()
    yield srv
    srv.stop()
    store.close()


def raw(srv: LabelServer, path: str, body: bytes, headers: dict[str, str] | None = None,
        timeout: float = 10.0) -> tuple[int, dict]:
    """Send one POST byte for byte (no client-side checks) and read the answer."""
    hdrs = {"Host": f"127.0.0.1:{srv.port}", "Content-Type": "application/json",
            "Content-Length": str(len(body)), **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server dropped the connection; got {data!r}"
            data += chunk
        header, rest = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in header.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "the server dropped the connection mid-answer"
            rest += chunk
    return int(header.split()[1]), json.loads(rest[:length])


def post(srv: LabelServer, path: str, body: object) -> tuple[int, dict]:
    return raw(srv, path, json.dumps(body).encode())


BAD = {
    "invalid-utf8-in-a-string": ("/api/compare", b'{"candidate_a": 1, "candidate_b": 2, "outcome": "\xff\xfe"}', {},
                                 "body", "not valid UTF-8"),
    "deeply-nested": ("/api/rank", b'{"candidate_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {},
                      "body", "nested too deeply"),
    "content-length-not-a-number": ("/api/compare", b"{}", {"Content-Length": "abc"}, "Content-Length",
                                    "non-negative integer, got 'abc'"),
    "content-length-negative": ("/api/compare", b"{}", {"Content-Length": "-1"}, "Content-Length",
                                "non-negative integer, got '-1'"),
    "content-length-with-sign": ("/api/compare", b"{}", {"Content-Length": "+2"}, "Content-Length", "got '\\+2'"),
    "not-json": ("/api/compare", b"{candidate_a: 1}", {}, "body", "not JSON"),
    "not-an-object": ("/api/compare", b"[1, 2]", {}, "body", "must be a JSON object, got list"),
    "id-1e400": ("/api/compare", b'{"candidate_a": 1e400, "candidate_b": 2, "outcome": "a"}', {}, "candidate_a",
                 "candidate id .*got inf"),
    "id-10**30": ("/api/compare", b'{"candidate_a": 1000000000000000000000000000000, "candidate_b": 2, "outcome": "a"}',
                  {}, "candidate_a", "positive JSON integer"),
    "id-true": ("/api/compare", b'{"candidate_a": true, "candidate_b": 2, "outcome": "a"}', {}, "candidate_a",
                "got true"),
    "id-float": ("/api/compare", b'{"candidate_a": 1, "candidate_b": 1.9, "outcome": "a"}', {}, "candidate_b",
                 "got 1.9"),
    "id-string": ("/api/compare", b'{"candidate_a": "1", "candidate_b": 2, "outcome": "a"}', {}, "candidate_a",
                  'got "1"'),
    "outcome-not-a-string": ("/api/compare", b'{"candidate_a": 1, "candidate_b": 2, "outcome": ["a"]}', {}, "outcome",
                             "outcome must be"),
    "missing-field": ("/api/compare", b'{"candidate_a": 1, "candidate_b": 2}', {}, "outcome", "missing field"),
    "unknown-field": ("/api/compare", b'{"candidate_a": 1, "candidate_b": 2, "outcome": "a", "who": "x"}', {}, "who",
                      "unknown field 'who'"),
    "revise-not-a-bool": ("/api/compare", b'{"candidate_a": 1, "candidate_b": 2, "outcome": "a", "revise": 1}', {},
                          "revise", "true or false"),
    "ranking-id-true": ("/api/rank", b'{"candidate_ids": [true, 2, 3]}', {}, "candidate_ids[0]", "got true"),
    "ranking-id-float": ("/api/rank", b'{"candidate_ids": [1, 2.0, 3]}', {}, "candidate_ids[1]", "got 2.0"),
    "ranking-id-string": ("/api/rank", b'{"candidate_ids": [1, 2, "3"]}', {}, "candidate_ids[2]", 'got "3"'),
    "ranking-not-a-list": ("/api/rank", b'{"candidate_ids": "1,2,3"}', {}, "candidate_ids", "JSON list"),
    "score-key-float": ("/api/score", b'{"scores": {"1.9": 3}}', {}, "scores", "not a candidate id"),
    "score-key-word": ("/api/score", b'{"scores": {"true": 3}}', {}, "scores", "not a candidate id"),
    "score-key-10**30": ("/api/score", b'{"scores": {"1000000000000000000000000000000": 3}}', {}, "scores",
                         "not a candidate id"),
    "score-value-bool": ("/api/score", b'{"scores": {"1": true}}', {}, "scores.1", "finite number, got true"),
    "score-value-nan": ("/api/score", b'{"scores": {"1": NaN}}', {}, "scores.1", "finite number"),
    "score-value-huge": ("/api/score", b'{"scores": {"1": 1e400}}', {}, "scores.1", "finite number"),
    "scores-empty": ("/api/score", b'{"scores": {}}', {}, "scores", "non-empty"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_request_is_a_400_naming_the_field(server: LabelServer, case: str) -> None:
    import re

    path, body, headers, field, words = BAD[case]
    before = server.store.counts()
    t0 = time.monotonic()
    status, data = raw(server, path, body, headers)
    assert time.monotonic() - t0 < 5, "the handler blocked"
    assert (status, data["type"], data["field"]) == (400, "BadRequest", field), data
    assert re.search(words, data["error"]), data
    assert server.store.counts() == before
    # and the server still answers
    assert post(server, "/api/compare", {"candidate_a": 1, "candidate_b": 2, "outcome": "a"})[0] == 200


def test_a_ranking_must_cover_every_candidate_of_its_task(server: LabelServer) -> None:
    before = server.store.counts()
    status, data = post(server, "/api/rank", {"candidate_ids": [1, 2]})
    assert (status, data["type"]) == (400, "InvalidRankingError") and "leaves out candidate(s) [3]" in data["error"]
    assert server.store.counts() == before
    assert post(server, "/api/rank", {"candidate_ids": [3, 1, 2]})[0] == 200


def test_a_repeated_post_is_idempotent_and_a_contradiction_needs_a_revision(server: LabelServer) -> None:
    store = server.store
    status, first = post(server, "/api/compare", {"candidate_a": 1, "candidate_b": 2, "outcome": "a"})
    assert status == 200
    counts = store.counts()
    # the same answer again, also with the pair the other way round: nothing new, the same id
    assert post(server, "/api/compare", {"candidate_a": 1, "candidate_b": 2, "outcome": "a"})[1]["ids"] == first["ids"]
    assert post(server, "/api/compare", {"candidate_a": 2, "candidate_b": 1, "outcome": "b"})[1]["ids"] == first["ids"]
    assert post(server, "/api/score", {"scores": {"4": 5, "5": 2}})[0] == 200
    assert post(server, "/api/score", {"scores": {"4": 5, "5": 2}})[0] == 200
    assert store.counts() == {**counts, "scores": 2}
    # a different answer to the same task ("a" then "b" pressed quickly) is refused
    status, data = post(server, "/api/compare", {"candidate_a": 1, "candidate_b": 2, "outcome": "b"})
    assert (status, data["type"]) == (409, "DuplicateJudgementError") and "revise" in data["error"]
    status, data = post(server, "/api/score", {"scores": {"4": 6}})
    assert status == 409
    assert store.counts() == {**counts, "scores": 2}
    # an explicit revision replaces it and is recorded as such
    status, data = post(server, "/api/compare", {"candidate_a": 1, "candidate_b": 2, "outcome": "b", "revise": True})
    assert status == 200
    current = store.comparisons()
    assert [(c.outcome, c.revises) for c in current] == [("b", first["ids"][0])]
    history = store.comparisons(history=True)
    assert [(c.outcome, c.replaced_at is not None) for c in history] == [("a", True), ("b", False)]


def test_a_stalled_body_releases_the_handler(server: LabelServer, monkeypatch) -> None:
    import tokengym.feedback.server as server_module

    monkeypatch.setattr(server_module._Handler, "timeout", 1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /api/compare HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        t0 = time.monotonic()
        assert sock.recv(100) == b""  # the server gives up on the missing bytes and closes
        assert time.monotonic() - t0 < 8
    assert post(server, "/api/compare", {"candidate_a": 1, "candidate_b": 3, "outcome": "tie"})[0] == 200
