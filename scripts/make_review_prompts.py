"""Generate the built-in ``movie_reviews`` prompt set (neutral openings of movie reviews).

Written by this project: openings are combinations of neutral lead-ins and film descriptions, so
nothing in the prompt pushes the sentiment either way; the task is to continue the review. The
split is fixed by a seeded shuffle. Re-run to regenerate ``envs/data/movie_reviews.jsonl``.
"""

import itertools
import json
import random
from pathlib import Path

SUBJECTS = [
    "this two-hour drama about a family bakery",
    "the new science-fiction film set on a mining colony",
    "this remake of a 1970s heist movie",
    "the documentary about deep-sea fishermen",
    "this animated feature about a lost robot",
    "the period piece set in a Victorian shipyard",
    "this small-town mystery",
    "the latest superhero sequel",
    "this romantic comedy about two rival chefs",
    "the courtroom thriller based on a true case",
    "this black-and-white film about a jazz pianist",
    "the horror movie set in an abandoned hospital",
    "this road movie across the Australian outback",
    "the biopic of a nineteenth-century inventor",
    "this war film told from a medic's point of view",
    "the coming-of-age story set at a summer camp",
    "this musical adaptation of a stage play",
    "the political drama about a city election",
    "this western about a cattle drive",
    "the space documentary narrated by an astronaut",
    "this French film about a retired postman",
    "the martial-arts movie filmed in Hong Kong",
    "this low-budget indie about a band on tour",
    "the fantasy epic about a kingdom at war",
    "this spy film set during the Cold War",
]
OPENERS = [
    "I watched {s} last weekend, and",
    "I went to see {s} on opening night.",
    "My friend recommended {s}, so",
    "I finally caught up with {s}.",
    "Going into {s}, I did not know much about it.",
    "{S} runs a little over two hours, and",
    "I saw {s} at a local cinema yesterday.",
    "After reading about {s}, I decided to watch it.",
    "{S} was released this month.",
    "Last night I streamed {s} at home.",
    "I had heard mixed things about {s} before watching it.",
    "The trailer for {s} came out last year, and",
    "We picked {s} for our weekly movie night.",
    "I watched {s} with my parents on Sunday.",
    "{S} is directed by a first-time filmmaker.",
    "My review of {s}:",
]


def main() -> None:
    rows = []
    for s, o in itertools.product(SUBJECTS, OPENERS):
        text = o.replace("{S}", s[0].upper() + s[1:]).replace("{s}", s)
        rows.append(text)
    rng = random.Random(20261128)
    rng.shuffle(rows)
    n_test = len(rows) // 5
    out = Path(__file__).resolve().parents[1] / "envs" / "data" / "movie_reviews.jsonl"
    with open(out, "w") as f:
        for i, text in enumerate(rows):
            split = "test" if i < n_test else "train"
            f.write(json.dumps({"id": f"review-{i:03d}", "prompt": text, "split": split}) + "\n")
    print(f"wrote {len(rows)} prompts ({n_test} test) to {out}")


if __name__ == "__main__":
    main()
