"""The CommonGen-style task's reward and gold judge: use the given concepts in one fluent sentence.

Split from :mod:`tokengym.rewards.tasks` (which holds the shared target lookup and the other tasks)
to keep each module short.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .base import RewardFunction
from .tasks import _targets

# --------------------------------------------------------------------------------- commongen
# Irregular forms of the words the concept vocabulary uses (and other common ones); regular
# inflections (dogs, catches, catching, baked, skiing) are matched by their Porter stem.
IRREGULAR_FORMS = {
    "begin": "began begun", "bite": "bit bitten", "blow": "blew blown", "break": "broke broken",
    "bring": "brought", "build": "built", "buy": "bought", "catch": "caught", "choose": "chose chosen",
    "come": "came", "cut": "cut", "dig": "dug", "do": "did done does", "draw": "drew drawn",
    "drink": "drank drunk", "drive": "drove driven", "eat": "ate eaten", "fall": "fell fallen", "feed": "fed",
    "find": "found", "fly": "flew flown flies", "freeze": "froze frozen", "get": "got gotten", "give": "gave given",
    "go": "went gone goes", "grow": "grew grown", "hang": "hung hanged", "have": "had has", "hide": "hid hidden",
    "hit": "hit", "hold": "held", "keep": "kept", "know": "knew known", "lead": "led", "leave": "left",
    "lie": "lay lain lying", "light": "lit lighted", "lose": "lost", "make": "made", "meet": "met", "pay": "paid",
    "put": "put", "read": "read", "ride": "rode ridden", "ring": "rang rung", "rise": "rose risen", "run": "ran",
    "say": "said", "see": "saw seen", "sell": "sold", "send": "sent", "shake": "shook shaken", "shine": "shone",
    "shoot": "shot", "sing": "sang sung", "sink": "sank sunk", "sit": "sat", "sleep": "slept", "slide": "slid",
    "speak": "spoke spoken", "spend": "spent", "spin": "spun", "stand": "stood", "steal": "stole stolen",
    "stick": "stuck", "sweep": "swept", "swim": "swam swum", "swing": "swung", "take": "took taken",
    "teach": "taught", "tear": "tore torn", "tell": "told", "think": "thought", "throw": "threw thrown",
    "wake": "woke woken", "wear": "wore worn", "win": "won", "write": "wrote written",
    "child": "children", "man": "men", "woman": "women", "person": "people", "mouse": "mice", "goose": "geese",
    "foot": "feet", "tooth": "teeth", "leaf": "leaves", "knife": "knives", "wolf": "wolves", "shelf": "shelves",
    "loaf": "loaves", "life": "lives", "wife": "wives", "fisherman": "fishermen", "sheep": "sheep",
}
_FORM_TO_BASE = {form: base for base, forms in IRREGULAR_FORMS.items() for form in forms.split()}

# Words a sentence has and a list of nouns lacks: determiners, pronouns, prepositions, auxiliaries.
FUNCTION_WORDS = frozenset(
    "a an the this that these those his her their its my our your some every each another "
    "he she they we i it you him them us me who which "
    "in on at with to of from into onto over under across through by for near behind around after before "
    "while during along beside between up down out off "
    "is are was were be been being am has have had do does did will would can could should may might must".split()
)
AUXILIARIES = frozenset("is are was were be been am has have had do does did will would can could should may might must".split())
_SUBJECTS = frozenset("i you he she it we they who to will would can could should may might must".split())
# Joining words: neither content (a repeated "and" is not repetition) nor a sign of a sentence
# ("dog and frisbee and park" is still a list).
CONJUNCTIONS = frozenset("and or but so then nor yet".split())
# Common verbs (base forms, every verb of the commongen vocabulary among them), to tell "the dog
# runs" (a verb) from "the dogs" (a noun) by the word before it. A list, not a tagger: a verb
# missing here only costs a sentence whose other verbs are missing too.
COMMON_VERBS = frozenset((
    "accept achieve act add admire agree allow answer appear apply arrive ask attack avoid bake balance bark "
    "bathe be beat become begin believe belong bite blink blow boast board boil borrow bounce bow break breathe "
    "bring brush build burn burst bury buy call care carry carve catch cause celebrate challenge change "
    "charge chase check cheer chew choose chop claim clap clean clear climb close coach collect combine come "
    "compare compete complain complete connect consider contain continue cook copy count cover crash crawl "
    "create cross cry cut damage dance decide decorate defend deliver describe design destroy develop dig "
    "disappear discover divide drag draw dream dress drink drive drop dry earn eat employ encourage end "
    "enjoy enter escape examine exercise exist expect explain explore express face fail fall fear feed feel "
    "fetch fill find finish fish fit fix flash float flow fly fold follow force form gather get give glow go "
    "grab greet grow guard guess guide handle hang happen hate hear heat help hide hike hit hold hop hope "
    "hug hum hunt hurry ignore imagine improve include increase invite join jump keep kick kiss knead kneel "
    "knit knock land laugh launch lay lead lean learn leave lick lie lift light like listen live load lock "
    "look lose love make manage march mark match measure meet melt mend milk miss mix mop move need nod "
    "notice observe offer open order own pack paddle paint park pass pause pay peel perform pick place plan "
    "plant play please point polish pour practice prefer prepare present press pretend prevent print produce "
    "promise protect provide pull push put race rain raise reach read realize receive record reduce relax "
    "remain remember remove repair repeat replace reply report rescue rest return ride ring rinse rise roast "
    "roll row rub run rush sail save say scare scatter score scratch scream search see seem sell send serve "
    "set settle sew shake share shine shop shout show sigh sign sing sink sip sit skate ski skip sleep slide "
    "slip smash smell smile sneak snow soak solve sort speak spend spill splash spray spread squeeze stand "
    "stare start stay steal steer step stir stop store stretch study suggest supply support surf surprise "
    "surround sweat sweep swim swing switch take talk taste teach tell thank think throw tie toss touch tour "
    "trade train travel treat trust try tug turn twist type unpack use utilize visit wait wake walk wander "
    "want warm warn wash waste watch water wave wear weigh welcome whisper whistle win wipe wish wonder work "
    "worry wrap write yell"
).split())
MAX_WORDS = 30

_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"')\]]*\s+(?=\S)")
_CONCEPT_LIST = re.compile(r"words?[:\s]+([a-z ,]+?)(?:\s+in (?:one|a single) sentence)?\s*[.?!]?\s*$", re.IGNORECASE)


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    # NLTK's Porter stemmer needs no downloaded data; nltk comes with rouge-score, a dependency.
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@lru_cache(maxsize=1)
def _verb_stems() -> frozenset[str]:
    return frozenset(stem(v) for v in COMMON_VERBS)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The Porter stem of ``word`` ("catching" -> "catch", "dogs" -> "dog")."""
    return _stemmer().stem(word)


def words_of(text: str) -> list[str]:
    """Lower-cased words (letters and apostrophes) of ``text``, a possessive 's dropped."""
    return [w[:-2] if w.endswith("'s") else w for w in _WORDS.findall(text.lower())]


def concept_used(concept: str, words: Sequence[str]) -> bool:
    """Whether any of ``words`` is ``concept`` or an inflection of it (dogs, caught, catching, children).

    Irregular forms are looked up, not stemmed into their base: "rose" the flower must not turn into
    "rise", so a word matches by its own stem or by being a listed irregular form of the concept.
    """
    concept = concept.lower()
    target = stem(concept)
    return any(stem(w) == target or _FORM_TO_BASE.get(w) == concept for w in words)


def coverage(concepts: Sequence[str], text: str) -> float:
    """Share of ``concepts`` used in ``text`` (inflections count)."""
    words = words_of(text)
    return sum(concept_used(c, words) for c in concepts) / len(concepts)


def _verb_like(words: Sequence[str]) -> bool:
    """Whether some word reads as a verb: an auxiliary, an -ed/-ing form, an irregular past, or a
    known verb right after a subject ("they play") or with a third-person -s after a noun ("dog runs")."""
    for j, w in enumerate(words):
        prev = words[j - 1] if j else ""
        if w in AUXILIARIES or _FORM_TO_BASE.get(w) in COMMON_VERBS:
            return True
        if len(w) >= 5 and w.endswith(("ed", "ing")) and stem(w) != w:
            return True
        known = w in COMMON_VERBS or stem(w) in _verb_stems()
        if known and prev in _SUBJECTS:
            return True
        if known and w.endswith("s") and prev and prev not in FUNCTION_WORDS:
            return True
    return False


def sentence_report(text: str, n_concepts: int) -> dict[str, Any]:
    """The observations both the reward and the judge use to tell a sentence from a list of words."""
    stripped = text.strip()
    words = words_of(stripped)
    content = [w for w in words if w not in FUNCTION_WORDS and w not in CONJUNCTIONS]
    repeats = max((content.count(w) for w in set(content)), default=0)
    n = len(words)
    return {
        "n_words": n,
        "min_words": n_concepts + 2,
        "function_word": any(w in FUNCTION_WORDS for w in words),
        "verb": _verb_like(words),
        # A list: commas after most words ("dog, frisbee, park") or one word a line.
        "list_like": n > 1 and (stripped.count(",") >= (n - 1) / 2 or stripped.count("\n") >= (n - 1) / 2),
        "distinct_content": len(set(content)) / len(content) if content else 0.0,
        "max_repeat": repeats,
        "stutter": any(a == b for a, b in zip(words, words[1:])),
        "sentences": 1 + len(_SENTENCE_BREAK.findall(stripped)) if stripped else 0,
        "newline": "\n" in stripped,
        "capital": bool(stripped) and stripped.lstrip("\"'(").strip()[:1].isupper(),
        "terminal": bool(re.search(r"[.!?][\"')\]]*$", stripped)),
    }


def fluency(report: dict[str, Any]) -> float:
    """A soft score in [0, 1] of how much a response reads as one plain sentence.

    Each failed check multiplies the score down rather than zeroing it, so a policy that writes
    nearly-sentences still gets a gradient towards real ones; a bare concept list scores <= 0.05.
    """
    n = report["n_words"]
    if n == 0:
        return 0.0
    f = min(1.0, n / report["min_words"])
    if n > MAX_WORDS:
        f *= MAX_WORDS / n
    if not report["function_word"]:
        f *= 0.2
    if not report["verb"]:
        f *= 0.5
    if report["list_like"]:
        f *= 0.3
    # A natural sentence may use a noun twice ("the dog ... the dog"); a loop repeats many.
    f *= min(1.0, 1.25 * report["distinct_content"])
    if report["stutter"]:
        f *= 0.5
    if report["sentences"] > 1:
        f *= 0.7
    if not report["terminal"]:
        f *= 0.9
    return float(f)


def well_formed(report: dict[str, Any]) -> bool:
    """The judge's binary check: one capitalised, punctuated sentence of sane length with a verb,
    function words, no list shape and no content word used more than twice."""
    return bool(
        report["sentences"] == 1 and not report["newline"] and report["capital"] and report["terminal"]
        and report["min_words"] <= report["n_words"] <= MAX_WORDS and report["function_word"] and report["verb"]
        and not report["list_like"] and report["max_repeat"] <= 2 and not report["stutter"]
    )


def parse_concepts(prompt: str) -> list[str] | None:
    """The concepts of ``"... the words: dog, frisbee, park."``-style prompts, else ``None``."""
    m = _CONCEPT_LIST.search(prompt.strip())
    if m is None:
        return None
    concepts = [c.strip() for c in m.group(1).replace(" and ", ",").split(",") if c.strip()]
    return concepts or None


def _concepts(value: Any) -> list[str]:
    if isinstance(value, str) or not all(isinstance(c, str) and c.strip() for c in value) or not value:
        raise TypeError("concepts must be a non-empty list of words")
    return [c.strip().lower() for c in value]


class CommonGenReward(RewardFunction):
    """Constrained generation: ``coverage * fluency``.

    ``coverage`` is the share of the item's ``concepts`` the response uses (inflections count:
    dogs, caught, catching); ``fluency`` (see :func:`fluency`) is a soft in-[0, 1] check that the
    response is one sentence and not the concepts listed, so "dog, frisbee, park" scores about 0.02
    and "The dog caught the frisbee in the park." scores 1.

    ``strict=True`` (the gold judge ``commongen_strict``) is ``coverage * well_formed`` with the
    binary :func:`well_formed` check in place of the soft fluency: the same observations, judged
    all-or-nothing and with capitalisation, a single line and at most two uses of any content word
    added. Both are heuristics without a parser; the judge is stricter, not independent.
    """

    name = "commongen"

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        concept_lists = _targets(self.name, "concepts", prompts, responses, metadata, parse_concepts, _concepts)
        out = np.zeros(len(responses), dtype=np.float64)
        for i, (response, concepts) in enumerate(zip(responses, concept_lists)):
            report = sentence_report(response, len(concepts))
            quality = float(well_formed(report)) if self.strict else fluency(report)
            out[i] = coverage(concepts, response) * quality
        return out


class CommonGenStrictReward(CommonGenReward):
    """The gold judge of ``tokengym/CommonGen-v0``: coverage times the binary well-formedness check."""

    name = "commongen_strict"

    def __init__(self) -> None:
        super().__init__(strict=True)
