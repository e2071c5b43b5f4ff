"""The task suite: Arithmetic-v0, CommonGen-v0 and LengthControl-v0 (rewards, judges, data, envs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from tokengym.envs import TextGenerationEnv, load_prompts
from tokengym.envs.prompts import BUILTIN_PROMPT_SETS
from tokengym.rewards import RewardError, list_rewards, resolve_reward
from tokengym.rewards.commongen import COMMON_VERBS, coverage, parse_concepts
from tokengym.rewards.tasks import bullet_lines, count_words, first_number, parse_arithmetic_question, parse_length_request

ROOT = Path(__file__).resolve().parents[1]
SETS = ("arithmetic", "commongen", "length_control")
TASKS = {
    # id: (prompt set, reward, gold)
    "tokengym/Arithmetic-v0": ("arithmetic", "arithmetic", "arithmetic_exact"),
    "tokengym/CommonGen-v0": ("commongen", "commongen", "commongen_strict"),
    "tokengym/LengthControl-v0": ("length_control", "length_control", "length_control_exact"),
}


def score(name: str, prompt: str, responses: list[str], item: dict | None = None) -> list[float]:
    meta = None if item is None else [{"item": item}] * len(responses)
    out = resolve_reward(name)([prompt] * len(responses), responses, metadata=meta)
    return [round(float(x), 4) for x in out]


# ----------------------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------------------
def test_first_number_reads_the_first_written_number():
    assert first_number("12") == 12
    assert first_number(" The answer is 1,200.") == 1200
    assert first_number("7-5 is 2") == 7  # a hyphen between numbers is not a sign
    assert first_number("it is -3") == -3
    assert first_number("3.5 apples") == 3.5
    assert first_number("12, 13 and 14") == 12
    assert first_number("twelve") is None and first_number("") is None


def test_arithmetic_reward_and_gold_on_hand_made_answers():
    item = {"answer": 12}
    prompt = "3 + 4 = 7\n7 + 5 ="
    responses = [" 12\nmore text", " The answer is 12.", " 7 + 5 = 12", " 13", "", " twelve", " 12."]
    assert score("arithmetic", prompt, responses, item) == [1.1, 1.0, 0.0, 0.1, 0.0, 0.0, 1.1]
    assert score("arithmetic_exact", prompt, responses, item) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert score(("arithmetic", {"format_bonus": 0.0}), prompt, responses, item)[:2] == [1.0, 1.0]


def test_arithmetic_answer_from_item_reference_or_prompt():
    r = resolve_reward("arithmetic_exact")
    # The item's answer wins over what the prompt seems to ask.
    assert r(["What is 1 + 1?"], ["5"], metadata=[{"item": {"answer": 5}}]).tolist() == [1.0]
    assert r(["Sam has"], ["5"], references=[["5"]]).tolist() == [1.0]
    assert r(["Sam has"], ["5"], references=["5"]).tolist() == [1.0]
    assert r(["What is 7 * 6? Answer with a number."], ["42"]).tolist() == [1.0]
    assert parse_arithmetic_question("2 + 3 = 5\n9 - 4 = 5\n11 - 2 =") == 9
    assert parse_arithmetic_question("What is 8 times 3?") == 24
    assert parse_arithmetic_question("Sam has 3 apples and gets 4 more. Sam has") is None
    with pytest.raises(RewardError, match="answer"):
        r(["Sam has 3 apples and gets 4 more. Sam has"], ["7"])
    with pytest.raises(ValueError, match="format_bonus"):
        resolve_reward("arithmetic", format_bonus=1.5)


def test_every_arithmetic_item_has_a_consistent_answer():
    for it in load_prompts("arithmetic").items:
        assert it["references"] == [str(it["answer"])]
        if it["form"] == "equation":
            assert parse_arithmetic_question(it["prompt"]) == it["answer"], it
        assert it["answer"] > 0


# ----------------------------------------------------------------------------------------------
# CommonGen
# ----------------------------------------------------------------------------------------------
def test_coverage_matches_inflections_not_other_words():
    concepts = ["dog", "frisbee", "catch"]
    assert coverage(concepts, "Dogs love catching frisbees.") == 1.0
    assert coverage(concepts, "The dog caught the frisbee.") == 1.0
    assert coverage(concepts, "The dog's frisbee.") == pytest.approx(2 / 3)
    assert coverage(["child", "throw", "mouse"], "The children threw toys at mice.") == 1.0
    # Irregular forms are looked up, not stemmed into their base: the flower is not a form of "rise".
    assert coverage(["rose"], "The sun rises.") == 0.0 and coverage(["rose"], "Roses grow.") == 1.0
    assert coverage(["cat"], "A category.") == 0.0


def test_commongen_word_list_does_not_win_over_a_sentence():
    item = {"concepts": ["dog", "frisbee", "catch"]}
    prompt = "Write one sentence that uses the words: dog, frisbee, catch."
    sentence = "The dog caught the frisbee in the park."
    word_list = ["dog, frisbee, catch", "dog frisbee catch", "Dog, frisbee, catch.", "- dog\n- frisbee\n- catch",
                 "dog frisbee catch dog frisbee catch"]
    r = score("commongen", prompt, [sentence, *word_list], item)
    assert r[0] == 1.0
    assert max(r[1:]) < 0.1
    partial = score("commongen", prompt, ["A dog ran after the ball in the park."], item)[0]
    assert max(r[1:]) < partial < r[0]  # a fluent sentence with one concept beats every list of all three
    g = score("commongen_strict", prompt, [sentence, *word_list], item)
    assert g == [1.0] + [0.0] * len(word_list)


def test_commongen_gold_is_stricter_than_the_reward():
    item = {"concepts": ["dog", "frisbee", "catch"]}
    prompt = "Use the words dog, frisbee, catch in one sentence."
    cases = [
        "the dog caught the frisbee in the park.",  # no capital
        "The dog caught the frisbee in the park",  # no full stop
        "The dog caught the frisbee. Then it ran home to its owner.",  # two sentences
        "The dog dog caught the frisbee in the park.",  # stutter
        "A dog and a frisbee and a catch.",  # no verb
    ]
    r = score("commongen", prompt, cases, item)
    g = score("commongen_strict", prompt, cases, item)
    assert g == [0.0] * len(cases)
    assert r[0] == 1.0  # soft: a lower-case start is not penalised
    assert all(0 < x < 1 for x in r[1:])
    assert all(gi <= ri + 1e-6 for gi, ri in zip(g, r))


def test_commongen_concepts_from_prompt_and_vocabulary_checks():
    assert parse_concepts("Write one sentence that uses the words: dog, frisbee, park.") == ["dog", "frisbee", "park"]
    assert parse_concepts("Use the words oven, bake, bread in one sentence.") == ["oven", "bake", "bread"]
    assert parse_concepts("Write a single sentence using all of these words: a, b, c.") == ["a", "b", "c"]
    assert resolve_reward("commongen")(["Use the words dog, park in one sentence."],
                                       ["The dog runs in the park."]).tolist() == [1.0]
    with pytest.raises(RewardError, match="concepts"):
        resolve_reward("commongen")(["Say something."], ["Hi."])
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_task_prompts as gen
    finally:
        sys.path.pop(0)
    verbs = {v for _, vs in gen.SCENES.values() for v in vs.split()}
    assert verbs <= COMMON_VERBS, sorted(verbs - COMMON_VERBS)
    for it in load_prompts("commongen").items:
        assert parse_concepts(it["prompt"]) == it["concepts"]
        assert coverage(it["concepts"], " ".join(it["concepts"])) == 1.0


# ----------------------------------------------------------------------------------------------
# LengthControl
# ----------------------------------------------------------------------------------------------
def test_length_control_words_exact_and_off_by_k():
    item = {"unit": "words", "target": 5}
    prompt = "Describe a cat in exactly 5 words."
    responses = ["Cats are soft and curious.", "Cats are soft.", "Cats are soft, curious and very playful.",
                 "Cats - soft, curious, playful, kind.", "", "one two three four five six seven eight nine ten eleven"]
    assert count_words("1. island\n2. sea") == 2 and count_words("well-known - pets") == 2
    assert score("length_control", prompt, responses, item) == [1.0, 0.6, 0.6, 1.0, 0.0, 0.0]
    assert score("length_control_exact", prompt, responses, item) == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_length_control_bullets():
    item = {"unit": "bullets", "target": 3}
    prompt = "Describe a cat in exactly 3 bullet points."
    responses = ["- soft\n- curious\n- playful", "1. soft\n2) curious\n* playful", "Here you go:\n- soft\n- curious\n- playful",
                 "- soft\n- curious", "- a\n- b\n- c\n- d\n- e\n- f", "soft, curious, playful"]
    assert bullet_lines(responses[2]) == (3, 1)
    assert score("length_control", prompt, responses, item) == [1.0, 1.0, 1.0, 0.6667, 0.0, 0.0]
    # The judge wants exactly the bullets: a preamble line fails it, though the reward ignores it.
    assert score("length_control_exact", prompt, responses, item) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_length_request_from_prompt_or_item():
    assert parse_length_request("In exactly 12 words, describe the moon.") == ("words", 12)
    assert parse_length_request("List exactly 3 facts about a guitar as bullet points.") == ("bullets", 3)
    assert parse_length_request("Write a poem.") is None
    r = resolve_reward("length_control_exact")
    assert r(["Write exactly 2 words about the sea."], ["Blue waves"]).tolist() == [1.0]
    assert r(["Write a poem."], ["Blue waves"], metadata=[{"item": {"unit": "words", "target": 2}}]).tolist() == [1.0]
    with pytest.raises(RewardError, match="unit"):
        r(["Write a poem."], ["Blue waves"])
    with pytest.raises(RewardError, match="target"):
        r(["Write a poem."], ["Blue"], metadata=[{"item": {"unit": "words", "target": 0}}])
    for it in load_prompts("length_control").items:
        assert parse_length_request(it["prompt"]) == (it["unit"], it["target"])


# ----------------------------------------------------------------------------------------------
# Registration, envs
# ----------------------------------------------------------------------------------------------
def test_rewards_are_registered_with_distinct_names():
    names = {"arithmetic", "arithmetic_exact", "commongen", "commongen_strict", "length_control",
             "length_control_exact"}
    assert names <= set(list_rewards())
    for name in names:
        assert resolve_reward(name).name == name


@pytest.mark.parametrize("env_id", sorted(TASKS))
def test_each_task_makes_and_passes_the_env_checker(env_id, smol_tok):
    from gymnasium.utils.env_checker import check_env

    prompts, reward, gold = TASKS[env_id]
    env = gym.make(env_id, tokenizer=smol_tok)
    u = env.unwrapped
    assert isinstance(u, TextGenerationEnv)
    assert (u.reward.name, u.gold_reward.name) == (reward, gold)
    assert u.prompts.name == prompts and {it["split"] for it in u.prompts.items} == {"train"}
    # Every prompt fits: none loses its beginning to the left truncation.
    for it in u.prompts.items:
        assert len(u._ep.model_input_text(it["prompt"])) and len(u._ep.prompt_tokens(it["prompt"])) < u.max_prompt_tokens
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(u)  # random tokens: the reward must score arbitrary text
    assert not caught, [str(w.message) for w in caught]
    test_env = gym.make(env_id, tokenizer=smol_tok, split="test")
    assert {it["split"] for it in test_env.unwrapped.prompts.items} == {"test"}


def _play(env, index: int, text: str) -> tuple[float, dict]:
    """Pin prompt ``index`` of ``env``, step the tokens of ``text`` and then EOS."""
    u = env.unwrapped
    env.reset(seed=0, options={"prompt_index": index})
    ids = [*u.tokenizer(text, add_special_tokens=False)["input_ids"], u.tokenizer.eos_token_id]
    assert len(ids) <= u.max_new_tokens
    for t in ids:
        _, reward, terminated, truncated, info = env.step(t)
        if terminated or truncated:
            break
    assert terminated
    return reward, info


def test_the_prompt_items_targets_reach_the_rewards_through_the_env(smol_tok):
    env = gym.make("tokengym/Arithmetic-v0", tokenizer=smol_tok)
    i, item = next((i, it) for i, it in enumerate(env.unwrapped.prompts.items) if it["form"] == "word")
    reward, info = _play(env, i, f" {item['answer']}\n")
    assert (reward, info["gold_score"]) == (pytest.approx(1.1), 1.0)
    reward, info = _play(env, i, f" {item['answer'] + 1}")
    assert (reward, info["gold_score"]) == (pytest.approx(0.1), 0.0)

    env = gym.make("tokengym/CommonGen-v0", tokenizer=smol_tok)
    item = env.unwrapped.prompts[0]
    reward, info = _play(env, 0, ", ".join(item["concepts"]))
    assert reward < 0.1 and info["gold_score"] == 0.0

    env = gym.make("tokengym/LengthControl-v0", tokenizer=smol_tok)
    i, item = next((i, it) for i, it in enumerate(env.unwrapped.prompts.items) if it["unit"] == "words")
    reward, info = _play(env, i, " ".join(["word"] * item["target"]))
    assert (reward, info["gold_score"]) == (1.0, 1.0)
    reward, info = _play(env, i, " ".join(["word"] * (item["target"] + 1)))
    assert reward == pytest.approx(1 - 1 / item["target"]) and info["gold_score"] == 0.0


# ----------------------------------------------------------------------------------------------
# Data: splits and reproducibility
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SETS)
def test_splits_are_fixed_sized_and_disjoint(name):
    assert name in BUILTIN_PROMPT_SETS
    train, test = load_prompts(name, split="train").items, load_prompts(name, split="test").items
    assert len(train) >= 200 and len(test) >= 64
    assert {it["id"] for it in train}.isdisjoint(it["id"] for it in test)
    assert {it["prompt"] for it in train}.isdisjoint(it["prompt"] for it in test)
    everything = train + test
    assert len({it["prompt"] for it in everything}) == len(everything)
    if name == "commongen":  # the same concepts in another order or wording count as a duplicate
        assert len({frozenset(it["concepts"]) for it in everything}) == len(everything)
    # Stratified: both splits hold every kind, and the first 64 test items (what the trainer's
    # evaluation reads) are not one kind.
    kind = {"arithmetic": "kind", "commongen": "difficulty", "length_control": "unit"}[name]
    assert {it[kind] for it in train} == {it[kind] for it in test}
    assert len({it[kind] for it in test[:64]}) > 1


def test_arithmetic_questions_are_unique_by_operands():
    # The open question is the last line; 3 + 4 and 4 + 3 are one question.
    seen = set()
    for it in load_prompts("arithmetic").items:
        last = it["prompt"].splitlines()[-1]
        numbers = tuple(int(x) for x in re.findall(r"\d+", last))
        key = (it["op"], *sorted(numbers)) if it["op"] in "+*" else (it["op"], *numbers)
        assert key not in seen, it
        seen.add(key)


def test_data_files_are_what_the_generator_writes(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_task_prompts.py"), "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in SETS:
        committed = (ROOT / "envs" / "data" / f"{name}.jsonl").read_bytes()
        assert (tmp_path / f"{name}.jsonl").read_bytes() == committed, f"{name}.jsonl differs from the generator's output"
        rows = [json.loads(line) for line in committed.decode().splitlines()]
        assert len(rows) == 400 and sum(r["split"] == "test" for r in rows) == 80
        assert np.all([isinstance(r["difficulty"], float) for r in rows])
