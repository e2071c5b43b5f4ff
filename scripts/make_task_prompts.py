"""Generate the built-in prompt sets of the task suite: ``arithmetic``, ``commongen`` and ``length_control``.

Written by this project, offline: every prompt comes from the templates, numbers and hand-written
vocabulary below, and one seeded ``random.Random`` per set fixes both the contents and the
train/test split, so a re-run writes byte-identical files. Re-run to regenerate
``envs/data/{arithmetic,commongen,length_control}.jsonl``; ``--out-dir`` writes elsewhere (the
tests compare such a re-run with the committed files).

Each set holds ``N_ITEMS`` prompts, a fifth of them test. The split is stratified by kind
(operation, number of concepts, unit) so both splits cover every kind, and the file order is shuffled
afterwards, because the evaluator reads the first test items in order. Items are unique by content
(the same sum in other words, or the same concept set in another order, counts as a duplicate), so
no test question is a reworded training question.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Callable

N_ITEMS = 400
TEST_SHARE = 0.2
OUT_DIR = Path(__file__).resolve().parents[1] / "envs" / "data"

# --------------------------------------------------------------------------------- arithmetic
# Few-shot completions, read without a chat template: three solved lines, then the question left
# open ("17 + 5 =" or "... Sam has"), so the first number of the response is the answer. Asked as
# a chat question ("What is 17 + 5? Answer with a number."), SmolLM2-135M-Instruct sampled at
# temperature 1 is right about 2% of the time in any of five wordings we tried (it restates the sum,
# explains, or drifts off); in this format it is partly right, which is where RL has signal. The
# solved lines use small numbers and change from prompt to prompt, so copying one earns nothing.
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
WORD_PROBLEMS = {
    # op: (setup, cloze); the cloze is completed by the answer
    "+": ("{name} has {a} {thing} and gets {b} more.", "{name} has"),
    "-": ("{name} has {a} {thing} and gives away {b}.", "{name} has"),
    "*": ("{name} buys {a} bags with {b} {thing} in each bag.", "{name} has"),
}
NAMES = ["Sam", "Mia", "Leo", "Ana", "Tom", "Zoe", "Ben", "Ivy", "Max", "Eva", "Raj", "Kim"]
THINGS = ["apples", "pencils", "marbles", "stickers", "coins", "cookies", "books", "shells", "cards", "eggs"]


def _operands(kind: str, rng: random.Random) -> tuple[int, int]:
    if kind == "add1":  # a one-digit number added to a number up to 20
        return rng.randint(2, 20), rng.randint(1, 9)
    if kind == "add2":  # a two-digit and a one- or two-digit number
        return rng.randint(10, 60), rng.randint(2, 39)
    if kind == "sub1":
        a = rng.randint(3, 18)
        return a, rng.randint(1, min(a - 1, 9))
    if kind == "sub2":  # answers stay positive: a small model rarely writes the sign right
        a = rng.randint(20, 99)
        return a, rng.randint(2, a - 5)
    if kind == "mul1":  # times tables
        return rng.randint(2, 12), rng.randint(2, 9)
    return rng.randint(11, 25), rng.randint(2, 5)  # mul2: a two-digit by a one-digit number


def _example(rng: random.Random) -> tuple[str, int, int, int]:
    op = rng.choice(sorted(OPS))
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    if op == "-":
        a, b = max(a, b) + 1, min(a, b)
    return op, a, b, OPS[op](a, b)


def _equation_prompt(op: str, a: int, b: int, rng: random.Random) -> str:
    shots = [_example(rng) for _ in range(3)]
    return "".join(f"{x} {o} {y} = {z}\n" for o, x, y, z in shots) + f"{a} {op} {b} ="


def _word_prompt(op: str, a: int, b: int, rng: random.Random) -> str:
    lines = []
    for _ in range(2):
        o, x, y, z = _example(rng)
        setup, cloze = WORD_PROBLEMS[o]
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        lines.append(f"{setup} {cloze} {z} {thing}.".format(name=name, thing=thing, a=x, b=y))
    setup, cloze = WORD_PROBLEMS[op]
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    lines.append(f"{setup} {cloze}".format(name=name, thing=thing, a=a, b=b))
    return "\n".join(lines)


# kind: (operation, difficulty for curricula, share of the set)
ARITH_KINDS = {
    "add1": ("+", 0.0, 0.2), "sub1": ("-", 0.1, 0.2), "mul1": ("*", 0.4, 0.1),
    "add2": ("+", 0.5, 0.2), "sub2": ("-", 0.6, 0.2), "mul2": ("*", 0.9, 0.1),
}
WORD_SHARE = 0.3


def arithmetic_items(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int, int]] = set()
    for kind, (op, difficulty, share) in ARITH_KINDS.items():
        items = by_kind.setdefault(kind, [])
        while len(items) < round(share * N_ITEMS):
            a, b = _operands(kind, rng)
            key = (op, *sorted((a, b))) if op in "+*" else (op, a, b)  # 3 + 4 and 4 + 3 are one question
            if key in seen:
                continue
            seen.add(key)
            answer = OPS[op](a, b)
            form = "word" if rng.random() < WORD_SHARE else "equation"
            text = (_word_prompt if form == "word" else _equation_prompt)(op, a, b, rng)
            items.append({"prompt": text, "answer": answer, "references": [str(answer)], "op": op, "kind": kind,
                          "form": form, "difficulty": difficulty})
    return by_kind


# --------------------------------------------------------------------------------- commongen
# Scenes of everyday nouns and verbs that go together, so every concept set drawn from one scene has
# a plain sentence that uses it (as in CommonGen, Lin et al. 2020, whose data is not used here).
SCENES = {
    "park": ("dog frisbee park ball bench grass tree child kite", "throw catch run play sit fly"),
    "kitchen": ("cook knife onion pan oven soup table tomato", "cut stir boil chop taste"),
    "beach": ("sand wave beach shell sun towel boat surfer", "swim dig surf walk collect"),
    "farm": ("farmer cow field tractor barn horse hay fence", "milk ride plant feed drive"),
    "school": ("teacher student book board classroom pencil desk lesson", "read write teach learn listen"),
    "street": ("car bus street driver traffic bicycle road corner", "drive stop cross wait ride"),
    "concert": ("guitar singer stage song crowd drum band", "sing play dance clap perform"),
    "snow": ("snow mountain sled jacket hill snowman glove", "ski slide build climb throw"),
    "garden": ("flower garden seed soil bee rose hose", "plant grow water pick dig"),
    "river": ("fish river boat rod bridge fisherman net", "catch row swim cross pull"),
    "restaurant": ("waiter menu plate customer pizza restaurant coffee", "order serve eat pay drink"),
    "football": ("player goal team field ball referee coach", "kick score run win pass"),
    "camping": ("tent fire forest camp marshmallow night star", "build roast sleep hike light"),
    "office": ("computer desk email meeting phone office printer", "type call send print work"),
    "library": ("book shelf library librarian page story", "read borrow return find sit"),
    "birthday": ("cake candle party gift balloon friend", "blow open celebrate sing eat"),
    "airport": ("plane airport pilot suitcase passenger ticket", "fly land board carry wait"),
    "rain": ("umbrella rain puddle window cloud boot", "fall jump hold open watch"),
    "zoo": ("lion zoo cage monkey elephant visitor banana", "feed watch climb eat sleep"),
    "cleaning": ("floor broom room dust window bucket", "sweep clean wash mop wipe"),
    "painting": ("artist brush canvas paint wall picture", "draw mix hang finish"),
    "hospital": ("doctor patient nurse hospital medicine bed", "examine help rest visit give"),
    "market": ("market apple basket vendor fruit price", "buy sell carry choose weigh"),
    "gym": ("gym weight coach mat bottle", "lift stretch train run sweat"),
    "home": ("cat sofa mouse window yarn owner", "sleep chase jump play watch"),
    "bakery": ("baker bread flour dough oven cookie", "bake knead mix roll sell"),
    "laundry": ("shirt sock laundry basket soap", "wash fold dry hang"),
    "mountain": ("hiker trail mountain backpack map summit", "climb reach rest carry follow"),
    "harbor": ("ship harbor sailor rope anchor dock", "sail tie pull load wave"),
    "classroom": ("child teacher paper scissors glue", "cut draw fold show"),
}
GEN_TEMPLATES = [
    "Write one sentence that uses the words: {c}.",
    "Write a single sentence using all of these words: {c}.",
    "Use the words {c} in one sentence.",
]


def commongen_items(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {"3": [], "4": []}
    seen: set[frozenset[str]] = set()
    scenes = sorted(SCENES)
    targets = {"3": round(0.7 * N_ITEMS), "4": N_ITEMS - round(0.7 * N_ITEMS)}
    for kind, target in targets.items():
        while len(by_kind[kind]) < target:
            nouns, verbs = (s.split() for s in SCENES[rng.choice(scenes)])
            n_verbs = 1 if kind == "3" else rng.choice((1, 2))
            concepts = rng.sample(nouns, int(kind) - n_verbs) + rng.sample(verbs, n_verbs)
            if len(set(concepts)) < len(concepts) or frozenset(concepts) in seen:
                continue
            seen.add(frozenset(concepts))
            rng.shuffle(concepts)
            text = rng.choice(GEN_TEMPLATES).format(c=", ".join(concepts))
            by_kind[kind].append({"prompt": text, "concepts": concepts, "difficulty": float(len(concepts) - 3)})
    return by_kind


# --------------------------------------------------------------------------------- length control
TOPICS = [
    "a cat", "the ocean", "a bicycle", "autumn", "coffee", "a library", "a thunderstorm", "your favourite food",
    "a city at night", "the moon", "a forest", "a train journey", "winter", "a birthday party", "the desert",
    "a garden", "a busy market", "an old house", "a mountain", "the sea at dawn", "a dog", "a rainy day",
    "a kitchen", "a football match", "a school", "a river", "a bakery", "the sky", "a snowy morning", "a guitar",
    "a lighthouse", "a farm", "the wind", "an island", "a museum", "a bridge",
]
WORD_LENGTH_TEMPLATES = ["Describe {t} in exactly {n} words.", "Write exactly {n} words about {t}.",
                         "In exactly {n} words, describe {t}."]
BULLET_TEMPLATES = ["Describe {t} in exactly {n} bullet points.", "Write exactly {n} bullet points about {t}.",
                    "List exactly {n} facts about {t} as bullet points."]
WORD_TARGETS = range(3, 16)
BULLET_TARGETS = range(2, 5)


def length_items(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {"words": [], "bullets": []}
    seen: set[tuple[str, str, int]] = set()
    targets = {"words": round(0.75 * N_ITEMS), "bullets": N_ITEMS - round(0.75 * N_ITEMS)}
    for unit, target in targets.items():
        templates, counts = (WORD_LENGTH_TEMPLATES, WORD_TARGETS) if unit == "words" else (BULLET_TEMPLATES, BULLET_TARGETS)
        while len(by_kind[unit]) < target:
            topic, n = rng.choice(TOPICS), rng.choice(counts)
            if (unit, topic, n) in seen:
                continue
            seen.add((unit, topic, n))
            text = rng.choice(templates).format(t=topic, n=n)
            text = text[0].upper() + text[1:]
            difficulty = n / max(WORD_TARGETS) if unit == "words" else 0.5 + n / (2 * max(BULLET_TARGETS))
            by_kind[unit].append({"prompt": text, "unit": unit, "target": n, "difficulty": round(difficulty, 3)})
    return by_kind


# --------------------------------------------------------------------------------- writing
SETS: dict[str, tuple[str, int, Callable[[random.Random], dict[str, list[dict[str, Any]]]]]] = {
    # name: (id prefix, seed, generator)
    "arithmetic": ("arith", 20261201, arithmetic_items),
    "commongen": ("commongen", 20261202, commongen_items),
    "length_control": ("length", 20261203, length_items),
}


def build(name: str) -> list[dict[str, Any]]:
    """The items of set ``name`` in file order, with ``id`` and ``split``."""
    prefix, seed, make = SETS[name]
    rng = random.Random(seed)
    rows = []
    for kind_items in make(rng).values():
        rng.shuffle(kind_items)
        n_test = round(TEST_SHARE * len(kind_items))
        rows += [{**it, "split": "test" if j < n_test else "train"} for j, it in enumerate(kind_items)]
    rng.shuffle(rows)
    return [{"id": f"{prefix}-{i:03d}", **row} for i, row in enumerate(rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where to write the .jsonl files (default {OUT_DIR})")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in SETS:
        rows = build(name)
        out = args.out_dir / f"{name}.jsonl"
        with open(out, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        n_test = sum(r["split"] == "test" for r in rows)
        print(f"wrote {len(rows)} prompts ({n_test} test) to {out}")


if __name__ == "__main__":
    main()
