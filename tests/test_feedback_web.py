"""The labelling web page in a real headless Chromium, its local-only guard, and crash safety."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from test_feedback_helpers import LineReader, small_store
from tokengym.feedback.annotators import TaskQueue
from tokengym.feedback.server import LabelServer

CHROMIUM = dict(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu",
                                                           "--disable-background-networking"])


@pytest.fixture()
def server(tmp_path: Path):
    store = small_store(tmp_path / "fb.sqlite")
    ann = store.add_annotator("carol")
    srv = LabelServer(store, TaskQueue(store, ann), "carol", port=0).start()
    yield srv
    srv.stop()
    store.close()


def _request(srv: LabelServer, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    hdrs = {"Host": f"127.0.0.1:{srv.port}", "Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=hdrs)
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, data


def test_browser_scores_ranks_and_compares(server: LabelServer) -> None:
    db = server.store.path
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**CHROMIUM)
        page = browser.new_page()
        page.goto(server.url)
        expect(page.locator("#prompt")).to_contain_text("Prompt number 0")
        expect(page.locator("#progress")).to_have_text("0 / 2 done")

        # Score: digit shortcuts fill the highlighted answer and move on; Enter submits.
        for key in ("6", "2", "4"):
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        expect(page.locator("#progress")).to_have_text("1 / 2 done")
        expect(page.locator("#prompt")).to_contain_text("Prompt number 1")

        # Rank (tab by keyboard shortcut): number inputs, 1 = best; reverse the shown order.
        page.keyboard.press("r")
        expect(page.locator("#tab-rank")).to_have_class("tab active")
        inputs = page.locator(".rank-input")
        expect(inputs).to_have_count(3)
        for i, rank in enumerate(("3", "2", "1")):
            inputs.nth(i).fill(rank)
        page.click("#submit")
        expect(page.locator("#progress")).to_have_text("1 / 2 done")

        # A bad ranking is refused with a message and nothing is stored.
        for i in range(3):
            inputs.nth(i).fill("1")
        page.click("#submit")
        expect(page.locator("#status")).to_contain_text("ranks must be 1..3")

        # Drag-and-drop: drop the third answer on the first; the numbers follow the new order.
        cards = page.locator("#candidates .candidate")
        cards.nth(2).drag_to(cards.nth(0))
        expect(cards.nth(0)).to_contain_text("answer 2 to prompt 1")
        expect(inputs.nth(0)).to_have_value("1")
        expect(inputs.nth(2)).to_have_value("3")
        page.click("#submit")
        expect(page.locator("#progress")).to_have_text("2 / 2 done")
        expect(page.locator("#prompt")).to_contain_text("Nothing left")

        # Compare: click the tab, then the "b" shortcut.
        page.click("#tab-compare")
        expect(page.locator("#progress")).to_have_text("0 / 6 done")
        page.keyboard.press("b")
        expect(page.locator("#progress")).to_have_text("1 / 6 done")
        page.click("#btn-tie")
        expect(page.locator("#progress")).to_have_text("2 / 6 done")
        browser.close()

    # Read back from the SQLite file itself, through a separate connection.
    conn = sqlite3.connect(db)
    scores = conn.execute("SELECT candidate_id, value FROM scores ORDER BY candidate_id").fetchall()
    rankings = conn.execute("SELECT prompt_id, candidate_ids FROM rankings").fetchall()
    comparisons = conn.execute("SELECT candidate_a, candidate_b, outcome FROM comparisons ORDER BY id").fetchall()
    conn.close()
    assert scores == [(1, 6.0), (2, 2.0), (3, 4.0)]
    assert rankings == [(1, "[3, 2, 1]"), (2, "[6, 4, 5]")]
    assert comparisons == [(1, 2, "b"), (1, 3, "tie")]


def test_foreign_host_or_origin_is_refused(server: LabelServer) -> None:
    before = server.store.counts()
    body = {"candidate_a": 1, "candidate_b": 2, "outcome": "a"}
    status, data = _request(server, "GET", "/", headers={"Host": "evil.example:80"})
    assert status == 403 and "Host" in data["error"]
    status, data = _request(server, "POST", "/api/compare", body, headers={"Host": f"attacker.test:{server.port}"})
    assert status == 403
    status, data = _request(server, "POST", "/api/compare", body, headers={"Origin": "http://evil.example"})
    assert status == 403 and "Origin" in data["error"]
    status, _ = _request(server, "POST", "/api/compare", body, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _ = _request(server, "POST", "/api/compare", body, headers={"Content-Type": "text/plain"})
    assert status == 415
    assert server.store.counts() == before
    # the same request from the page's own origin goes through
    status, data = _request(server, "POST", "/api/compare", body, headers={"Origin": f"http://localhost:{server.port}",
                                                                         "Host": f"localhost:{server.port}"})
    assert status == 200 and data["ok"]


def test_bad_submissions_name_the_problem(server: LabelServer) -> None:
    before = server.store.counts()
    status, data = _request(server, "POST", "/api/score", {"scores": {"1": 99}})
    assert (status, data["type"]) == (400, "ScoreOutOfRangeError")
    status, data = _request(server, "POST", "/api/rank", {"candidate_ids": [1, 1, 2]})
    assert (status, data["type"]) == (400, "InvalidRankingError")
    status, data = _request(server, "POST", "/api/compare", {"candidate_a": 1, "candidate_b": 777, "outcome": "a"})
    assert (status, data["type"]) == (400, "UnknownCandidateError")
    status, data = _request(server, "POST", "/api/rank", {"wrong": 1})
    assert (status, data["type"]) == (400, "BadRequest")
    assert server.store.counts() == before


def test_killed_server_keeps_every_submitted_judgement(tmp_path: Path) -> None:
    small_store(tmp_path / "fb.sqlite", n_prompts=3, k=3).close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokengym.feedback.cli", "label", "--serve", "--port", "0",
         "--store", str(tmp_path / "fb.sqlite"), "--annotator", "dave"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = LineReader(proc).wait_for("http://127.0.0.1:", timeout=120)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        srv = type("S", (), {"port": port})
        sent = [
            ("/api/score", {"scores": {"1": 7, "2": 1, "3": 3}}),
            ("/api/rank", {"candidate_ids": [6, 4, 5]}),
            ("/api/compare", {"candidate_a": 7, "candidate_b": 8, "outcome": "a"}),
            ("/api/compare", {"candidate_a": 7, "candidate_b": 9, "outcome": "tie"}),
        ]
        for path, body in sent:
            status, data = _request(srv, "POST", path, body)
            assert status == 200, data
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: nothing gets flushed on exit
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(tmp_path / "fb.sqlite")
    assert conn.execute("SELECT candidate_id, value FROM scores ORDER BY id").fetchall() == [(1, 7.0), (2, 1.0), (3, 3.0)]
    assert conn.execute("SELECT candidate_ids FROM rankings").fetchall() == [("[6, 4, 5]",)]
    assert conn.execute("SELECT candidate_a, candidate_b, outcome FROM comparisons ORDER BY id").fetchall() == [
        (7, 8, "a"), (7, 9, "tie")]
    conn.close()


def test_page_sends_one_answer_per_task_and_hides_compare_buttons_outside_compare(tmp_path: Path) -> None:
    """Keys pressed while a submission is in flight are ignored (the server here answers slowly, so
    they certainly are in flight): "a" then "b" stores one comparison, Enter twice one set of scores."""
    import time

    store = small_store(tmp_path / "fb.sqlite")
    queue = TaskQueue(store, store.add_annotator("gina"))
    for name in ("submit_scores", "submit_comparison"):
        real = getattr(queue, name)
        setattr(queue, name, lambda *a, _real=real, **kw: (time.sleep(0.4), _real(*a, **kw))[1])
    srv = LabelServer(store, queue, "gina", port=0).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(**CHROMIUM)
            page = browser.new_page()
            page.goto(srv.url)
            expect(page.locator("#progress")).to_have_text("0 / 2 done")
            # score mode: the compare buttons are not shown, the submit button is
            expect(page.locator("#btn-a")).to_be_hidden()
            expect(page.locator("#compare-actions")).to_be_hidden()
            expect(page.locator("#submit")).to_be_visible()
            for key in ("6", "2", "4"):
                page.keyboard.press(key)
            page.keyboard.press("Enter")
            page.keyboard.press("Enter")  # while the first is in flight
            expect(page.locator("#submit")).to_be_disabled()
            expect(page.locator("#progress")).to_have_text("1 / 2 done")
            expect(page.locator("#submit")).to_be_enabled()

            page.keyboard.press("c")
            expect(page.locator("#tab-compare")).to_have_class("tab active")
            expect(page.locator("#submit")).to_be_hidden()
            expect(page.locator("#btn-a")).to_be_visible()
            page.keyboard.press("a")
            page.keyboard.press("b")  # quickly after: ignored, not a second (contradicting) answer
            expect(page.locator("#progress")).to_have_text("1 / 6 done")
            expect(page.locator("#btn-b")).to_be_enabled()
            expect(page.locator("#status")).to_have_text("Saved.")
            browser.close()
    finally:
        srv.stop()
    assert [(s.candidate_id, s.value) for s in store.scores(history=True)] == [(1, 6.0), (2, 2.0), (3, 4.0)]
    assert [(c.candidate_a, c.candidate_b, c.outcome) for c in store.comparisons(history=True)] == [(1, 2, "a")]
    store.close()
