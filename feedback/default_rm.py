"""The main task's learned reward model: built on first use from simulated human comparisons, cached.

The recipe is what a small human-feedback project does, with simulated annotators standing in for
people, so that a user sees RLHF with a *learned* proxy and an independent gold judge offline:

1. **candidates**: the reference policy (SmolLM2) continues every train prompt of the task 8
   times, at temperatures 1.0, 1.0, 0.7 and 1.3 twice over, so the pairs span both typical samples
   and the tails the policy may drift into;
2. **labels**: every within-prompt pair is compared by three simulated annotators, each one's utility
   the gold judge (VADER compound sentiment) seen through its own Bradley-Terry noise, calibrated so
   that each agrees with the gold judge on 90 % of the labelled pairs;
3. **reward model**: all-MiniLM-L6-v2 with a scalar head on the (prompt, response) text pair,
   trained with the pairwise Bradley-Terry loss, whole prompts per batch with each response scored
   once (held-out prompts measure its accuracy against the gold judge), and normalised to mean 0,
   std 1 on the temperature-1 samples of the reference policy.

The gold judge is never paid during RL: the task optimises this model and reports VADER beside it,
so over-optimisation of the proxy shows as the two scores parting ways.

The folder lands under ``tokengym.models.cache_dir() / "reward_models"`` in one atomic rename with a
``build.json`` (recipe, accuracy, timings); a killed build leaves no folder, and a later call that
finds the folder builds nothing. The recipe's hash is part of the folder name, so a changed recipe
never reuses a stale model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import FeedbackError


@dataclass(frozen=True)
class RewardModelRecipe:
    """Everything that decides the cached model (its hash names the folder)."""

    policy: str = "smollm2"
    prompts: str = "movie_reviews"
    split: str = "train"
    max_prompts: int | None = None  # None: every prompt of the split (tests use a few)
    # 8 continuations per prompt (28 within-prompt pairs): measured against 4 (6 pairs) and 6 (15) on an
    # independent set of test-prompt samples, accuracy vs gold 0.75 -> 0.79 -> 0.80 (annotation_budget_grouped.md).
    temperatures: tuple[float, ...] = (1.0, 1.0, 0.7, 1.3, 1.0, 1.0, 0.7, 1.3)
    max_new_tokens: int = 24  # the task's response length, so the model is trained on what it will score
    max_prompt_tokens: int = 32
    annotator_accuracy: float = 0.9
    # Simulated annotators who each compare every pair, with independent noise (each at
    # ``annotator_accuracy``): three of them average much of the label noise out of the training
    # signal. With the batch tripled as well (same prompts per step, same number of steps), accuracy
    # vs gold on fresh test-prompt samples rose from 0.799 to 0.820 (annotation_budget_annotators.md);
    # three annotators at the old batch of 128 (three times the steps) gave 0.801.
    annotators: int = 3
    gold: str = "vader"
    # 4 epochs, the learning rate annealed to 0. Pairs trained one by one overfit after about one epoch
    # (each response is then seen in K-1 separate steps per epoch); with whole prompts per batch
    # (group_by_prompt) a response gets one combined gradient per epoch, and accuracy on fresh samples
    # rose from 1 to 4 epochs (0.774, 0.798, 0.798, 0.802 with 8 candidates); 6e-4 instead of 3e-4 lost it.
    epochs: float = 4.0
    lr: float = 3e-4
    rm_batch_size: int = 384  # judgements per step: about 4 whole prompts of 28 pairs, each pair judged 3 times
    max_length: int = 64
    heldout_fraction: float = 0.1
    seed: int = 0
    # None: every within-prompt pair is labelled once (1,920 for the default); a number labels that
    # many pairs, drawn at random (the annotation-budget benchmark varies it).
    max_comparisons: int | None = None
    # The reward model's training precision (``RMConfig.dtype``): "auto" is bf16 autocast where the
    # CPU runs it fast, fp32 elsewhere.
    dtype: str = "auto"
    # Whole prompts per reward-model batch, each distinct response scored once (``RMConfig.group_by_prompt``).
    group_by_prompt: bool = True

    def key(self) -> str:
        fields = asdict(self)
        # Fields added later leave the key unchanged at their defaults, so cached models stay valid.
        if fields["max_comparisons"] is None:
            del fields["max_comparisons"]
        if fields["dtype"] == "auto":
            del fields["dtype"]
        if not fields["group_by_prompt"]:
            del fields["group_by_prompt"]
        if fields["annotators"] == 1:
            del fields["annotators"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


DEFAULT_RECIPE = RewardModelRecipe()


def cached_path(recipe: RewardModelRecipe = DEFAULT_RECIPE) -> Path:
    from tokengym.models import cache_dir

    return cache_dir() / "reward_models" / f"sentiment-{recipe.key()}"


def uses_default_reward_model(env_id: str, reward: str | None = None) -> bool:
    """Whether a run of ``env_id`` (with ``reward`` overriding the task's own) is paid by this model."""
    import gymnasium as gym

    import tokengym  # noqa: F401  (registers the ids)

    return (reward if reward is not None else gym.spec(env_id).kwargs.get("reward")) == "sentiment_rm"


def fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a reward model folder's weights: two builds of one recipe on different machines
    (bf16 on one, fp32 on another) are different models under the same folder name, and results
    measured with one must not be mixed with results measured with the other."""
    from safetensors.torch import load_file

    from tokengym.agents.policy import tensors_fingerprint

    named = [(f"{f.name}/{k}", t) for f in sorted(Path(path).glob("*.safetensors")) for k, t in load_file(f).items()]
    return tensors_fingerprint(named)[:12]


def ensure_reward_model(recipe: RewardModelRecipe = DEFAULT_RECIPE, progress: bool = True,
                        log: Callable[[str], None] | None = print, policy: tuple[Any, Any] | None = None,
                        reward_model: Callable[[], tuple[Any, Any]] | None = None) -> Path:
    """The cached reward model folder for ``recipe``, built first if it is missing.

    ``policy``: an already loaded ``(tokenizer, model)`` for the candidates (default: ``recipe.policy``).
    ``reward_model``: builds the fresh ``(tokenizer, model)`` to train (default: MiniLM); tests pass
    tiny models here.
    """
    from tokengym.utils import recover_directory

    path = cached_path(recipe)
    recover_directory(path)
    if (path / "build.json").is_file():
        return path
    if log:
        log(f"building the task's reward model (once; cached in {path}) ...")
    build_reward_model(path, recipe, progress=progress, log=log, policy=policy, reward_model=reward_model)
    return path


def generate_candidates(recipe: RewardModelRecipe, tokenizer: Any, model: Any, progress: bool = True,
                        batch_size: int = 64, share_prefill: bool = True) -> list[tuple[str, str, float]]:
    """``(prompt, response, temperature)`` for every train prompt and temperature of the recipe.

    Sampling goes through the agents' KV-cached sampler on the task's own env, so the candidates are
    exactly what the reference policy produces in RL (same prompt formatting, truncation and stops).
    """
    import torch
    from tqdm.auto import tqdm

    from tokengym.agents.rollout import CachedSampler
    from tokengym.envs import BatchedTextEnv

    env = BatchedTextEnv(num_envs=batch_size, model=recipe.policy, tokenizer=tokenizer, reward=lambda p, r: 0.0,
                         prompts=recipe.prompts, split=recipe.split, max_new_tokens=recipe.max_new_tokens,
                         max_prompt_tokens=recipe.max_prompt_tokens)
    n = len(env.prompts) if recipe.max_prompts is None else min(recipe.max_prompts, len(env.prompts))
    gen = torch.Generator().manual_seed(recipe.seed)
    rows: list[tuple[str, str, float]] = []
    batches = [(s, T, start) for s, T in enumerate(recipe.temperatures) for start in range(0, n, batch_size)]
    model.eval()
    # Every batch of prompts is sampled once per temperature (8 times): its prefill is computed once.
    prefills: dict[bytes, Any] | None = {} if share_prefill else None
    for s, T, start in tqdm(batches, desc="reward model: candidates", disable=not progress, unit="batch"):
        idx = np.arange(start, start + batch_size) % n
        b = CachedSampler(model, temperature=T, prefill_memo=prefills).rollout(env, seed=recipe.seed * 7919 + s * 1009 + start,
                                                        generator=gen, options={"prompt_indices": idx})
        keep = min(batch_size, n - start)  # the last batch wraps around; drop the repeats
        rows += [(b.prompt_texts[i], b.response_texts[i], T) for i in range(keep)]
    return rows


def build_reward_model(out: str | os.PathLike, recipe: RewardModelRecipe = DEFAULT_RECIPE, progress: bool = True,
                       log: Callable[[str], None] | None = print, policy: tuple[Any, Any] | None = None,
                       reward_model: Callable[[], tuple[Any, Any]] | None = None,
                       candidates: list[tuple[str, str, float]] | None = None) -> dict[str, Any]:
    """Build the recipe's reward model into ``out`` (atomically); returns what ``build.json`` records.

    ``candidates``: the ``generate_candidates`` rows of this recipe, when a caller building several
    models from the same samples already has them (they are generated otherwise).
    """
    import tempfile

    import shutil

    from tokengym.models import load_causal_lm
    from tokengym.utils import atomic_directory

    from .rm_training import RMConfig, train_reward_model
    from .simulate import LabelSimulator, SimulatedAnnotator, resolve_judge
    from .store import FeedbackStore

    t0 = time.time()
    if candidates is None:
        tokenizer, model = policy or load_causal_lm(recipe.policy)
        rows = generate_candidates(recipe, tokenizer, model, progress=progress)
    else:
        rows = list(candidates)
    t_gen = time.time() - t0
    judge = resolve_judge(recipe.gold)
    with tempfile.TemporaryDirectory(prefix="tokengym-rm-") as work:
        store = FeedbackStore(Path(work) / "feedback.sqlite")
        by_prompt: dict[str, list[tuple[str, float]]] = {}
        for prompt, response, T in rows:
            by_prompt.setdefault(prompt, []).append((response, T))
        prompt_ids = store.add_prompts(list(by_prompt))
        # Round 0 holds the temperature-1 samples: they are the reference policy's own distribution,
        # on which the reward is normalised to mean 0, std 1.
        store.add_candidates([(pid, text, "sample", {"temperature": T}, recipe.policy, 0 if T == 1.0 else 1)
                              for pid, items in zip(prompt_ids, by_prompt.values()) for text, T in items])
        sim = LabelSimulator(store, judge, seed=recipe.seed)
        n_pairs = sum(len(v) * (len(v) - 1) // 2 for v in by_prompt.values())
        annotators = [SimulatedAnnotator(f"sim-{i}", accuracy=recipe.annotator_accuracy, seed=recipe.seed + i)
                      for i in range(recipe.annotators)]
        if recipe.max_comparisons is not None:
            n_pairs = min(recipe.max_comparisons, n_pairs)
        n_labels = sim.label_pairs(annotators, sim.sample_pairs(n_pairs))
        rm_cfg = RMConfig(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.rm_batch_size,
                          max_length=recipe.max_length, heldout_fraction=recipe.heldout_fraction,
                          reference_round=0, kinds=("compare",), dtype=recipe.dtype,
                          group_by_prompt=recipe.group_by_prompt, seed=recipe.seed)
        if log:
            log(f"reward model: {len(rows)} candidates in {t_gen:.0f} s, {n_labels} simulated comparisons; training ...")
        model_dir = Path(work) / "model"
        step_log = (lambda msg: log(f"reward model: {msg}")) if log and progress else None
        result = train_reward_model(store, model_dir, rm_cfg, judge=judge, log=step_log,
                                    model=reward_model() if reward_model else None)
        info = {"recipe": asdict(recipe), "candidates": len(rows), "comparisons": n_labels,
                "heldout_accuracy": result.heldout_accuracy, "heldout_gold_accuracy": result.heldout_gold_accuracy,
                "heldout_pairs": result.n_heldout_pairs, "mean": result.mean, "std": result.std,
                "candidates_s": round(t_gen, 1), "total_s": round(time.time() - t0, 1)}
        # One rename publishes the model with its build.json, so a killed build leaves no folder.
        with atomic_directory(out, what="task reward model") as tmp:
            for f in model_dir.iterdir():
                shutil.move(str(f), tmp / f.name)
            (tmp / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    if log:
        log(f"reward model: held-out pairwise accuracy {result.heldout_accuracy:.3f} vs labels, "
            f"{result.heldout_gold_accuracy:.3f} vs the gold judge ({result.n_heldout_pairs} pairs); "
            f"built in {info['total_s']:.0f} s")
    return info


def sentiment_reward_model(path: str | os.PathLike | None = None, build: bool = True, **kwargs: Any):
    """Reward factory ``"sentiment_rm"``: the learned reward of the main task (built when missing).

    ``build=False`` refuses to build and raises instead, for code that must not spend minutes.
    """
    from tokengym.rewards.learned import LearnedReward

    if path is None:
        path = cached_path()
        if not (path / "build.json").is_file():
            if not build:
                raise FeedbackError(f"reward 'sentiment_rm': no cached model at {path}; run `tokengym build-rm`")
            ensure_reward_model()
    return LearnedReward(path, **kwargs)
