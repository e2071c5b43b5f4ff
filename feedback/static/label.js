// tokengym labeller: fetches the next task of the chosen kind, lets the person judge it, posts it.
// Every submission is committed by the server before it answers, so the progress count is the truth.
// One submission at a time: from a key press or click until the next task is shown, the buttons are
// disabled and further presses are ignored, so a quick "a" then "b" (or Enter twice) sends one answer.
"use strict";

const state = { kind: null, kinds: [], task: null, range: [1, 7], focus: 0, dragged: null, busy: false };
const $ = (id) => document.getElementById(id);
const HELP = {
  score: "Type a score in each box (digit keys fill the highlighted answer and move on), Enter submits.",
  rank: "Number the answers 1 = best, or drag them into order; Enter submits.",
  compare: "Which answer is better? a / \u2190 for A, b / \u2192 for B, t / \u2193 for a tie.",
};

function status(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = cls || "";
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error((data.type ? data.type + ": " : "") + data.error);
  return data;
}

function setBusy(busy) {
  state.busy = busy;
  for (const id of ["btn-a", "btn-b", "btn-tie", "submit"]) $(id).disabled = busy;
  document.body.classList.toggle("busy", busy);
}

async function load(kind) {
  const data = await api("/api/task?kind=" + encodeURIComponent(kind || ""));
  state.kinds = data.kinds;
  state.kind = kind || data.kinds[0];
  state.range = data.score_range;
  state.task = data.task;
  state.focus = 0;
  for (const k of ["score", "rank", "compare"]) {
    const tab = $("tab-" + k);
    tab.hidden = !state.kinds.includes(k);
    tab.classList.toggle("active", k === state.kind);
  }
  $("progress").textContent = `${data.progress.done} / ${data.progress.total} done`;
  render();
}

function card(c, label) {
  const div = document.createElement("div");
  div.className = "candidate";
  div.dataset.id = c.id;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = (label ? label + ": " : "") + c.text;
  div.appendChild(text);
  return div;
}

function numberInput(cls, id, min, max, value) {
  const input = document.createElement("input");
  Object.assign(input, { type: "number", min, max, step: 1, className: cls });
  input.dataset.id = id;
  if (value !== undefined) input.value = value;
  return input;
}

function render() {
  const box = $("candidates");
  box.innerHTML = "";
  box.className = "";
  $("help").textContent = HELP[state.kind] || "";
  const t = state.task;
  $("compare-actions").hidden = !t || state.kind !== "compare";
  $("submit-actions").hidden = !t || state.kind === "compare";
  if (!t) {
    $("prompt").textContent = "Nothing left to label here. Thank you!";
    return;
  }
  $("prompt").textContent = t.prompt.text;
  if (state.kind === "score") {
    t.candidates.forEach((c) => {
      const div = card(c);
      const input = numberInput("score-input", c.id, state.range[0], state.range[1]);
      input.addEventListener("focus", () => { state.focus = [...box.children].indexOf(div); highlight(); });
      div.prepend(input);
      box.appendChild(div);
    });
  } else if (state.kind === "rank") {
    t.candidates.forEach((c, i) => box.appendChild(rankCard(c, i + 1)));
  } else {
    box.className = "pair";
    box.appendChild(card(t.candidates[0], "A"));
    box.appendChild(card(t.candidates[1], "B"));
  }
  highlight();
}

function rankCard(c, rank) {
  const div = card(c);
  div.prepend(numberInput("rank-input", c.id, 1, state.task.candidates.length, rank));
  div.draggable = true;
  div.addEventListener("dragstart", () => { state.dragged = div; });
  div.addEventListener("dragover", (e) => e.preventDefault());
  div.addEventListener("drop", (e) => {
    e.preventDefault();
    if (!state.dragged || state.dragged === div) return;
    const box = $("candidates");
    const cards = [...box.children];
    box.insertBefore(state.dragged, cards.indexOf(state.dragged) < cards.indexOf(div) ? div.nextSibling : div);
    [...box.querySelectorAll(".rank-input")].forEach((inp, i) => { inp.value = i + 1; });
  });
  return div;
}

function highlight() {
  const cards = [...document.querySelectorAll("#candidates .candidate")];
  cards.forEach((c, i) => c.classList.toggle("focused", state.kind === "score" && i === state.focus));
}

async function submit(outcome) {
  const t = state.task;
  if (!t || state.busy) return;
  setBusy(true);
  try {
    if (state.kind === "score") {
      const scores = {};
      for (const inp of document.querySelectorAll(".score-input")) {
        if (inp.value === "") throw new Error("give every answer a score first");
        scores[inp.dataset.id] = Number(inp.value);
      }
      await api("/api/score", { scores });
    } else if (state.kind === "rank") {
      const inputs = [...document.querySelectorAll(".rank-input")];
      const ranks = inputs.map((inp) => Number(inp.value));
      const sorted = [...ranks].sort((a, b) => a - b);
      if (!sorted.every((r, i) => r === i + 1)) throw new Error(`ranks must be 1..${ranks.length}, each used once`);
      const order = inputs.map((inp) => Number(inp.dataset.id));
      const best = order.map((id, i) => [ranks[i], id]).sort((a, b) => a[0] - b[0]).map((p) => p[1]);
      await api("/api/rank", { candidate_ids: best });
    } else {
      await api("/api/compare", { candidate_a: t.candidates[0].id, candidate_b: t.candidates[1].id, outcome });
    }
    status("Saved.", "ok");
    await load(state.kind);
  } catch (err) {
    status(err.message, "error");
  } finally {
    setBusy(false);
  }
}

async function switchKind(kind) {
  if (state.busy) return;
  setBusy(true);
  try {
    await load(kind);
  } catch (err) {
    status(err.message, "error");
  } finally {
    setBusy(false);
  }
}

document.addEventListener("keydown", (e) => {
  const typing = e.target.tagName === "INPUT";
  if (state.busy) {  // a submission is in flight: keys that would submit or switch are swallowed
    if (!typing || e.key === "Enter") e.preventDefault();
    return;
  }
  if (e.key === "Enter" && state.kind !== "compare") { e.preventDefault(); submit(); return; }
  if (typing && state.kind === "rank") return;
  if (state.kind === "compare" && !typing) {
    const outcome = { a: "a", ArrowLeft: "a", b: "b", ArrowRight: "b", t: "tie", ArrowDown: "tie" }[e.key];
    if (outcome) { e.preventDefault(); submit(outcome); return; }
  }
  if (state.kind === "score" && !typing && /^[0-9]$/.test(e.key)) {
    const inputs = [...document.querySelectorAll(".score-input")];
    if (!inputs.length) return;
    e.preventDefault();
    inputs[state.focus].value = e.key;
    state.focus = Math.min(state.focus + 1, inputs.length - 1);
    highlight();
    return;
  }
  if (!typing) {
    const kind = { s: "score", r: "rank", c: "compare" }[e.key];
    if (kind && state.kinds.includes(kind)) switchKind(kind);
  }
});

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => switchKind(tab.dataset.kind));
}
$("btn-a").addEventListener("click", () => submit("a"));
$("btn-b").addEventListener("click", () => submit("b"));
$("btn-tie").addEventListener("click", () => submit("tie"));
$("submit").addEventListener("click", () => submit());
switchKind(null);
