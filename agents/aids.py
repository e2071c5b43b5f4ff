"""Training aids for every token-level agent: a prompt curriculum, augmentation of high-reward
outputs, and distillation from a teacher model.

* :class:`CurriculumScheduler` -- set ``agent.prompt_sampler = CurriculumScheduler(env.prompts)``:
  prompts are drawn from the easiest fraction of the set, which grows to all prompts during training.
* :class:`AugmentationMixin` (with :class:`OutputAugmenter`) -- the best outputs of each rollout are
  edited (insert / delete / replace of a token or word), re-scored by the env's reward and added to
  the update as extra episodes.
* :class:`DistillationMixin` -- adds ``distill_coef * KL(teacher || student)`` per token (full
  vocabulary) to the agent's loss.

The mixins go in front of any agent class: ``with_aids(GRPOAgent, AugmentationMixin)(env, model,
cfg, augmenter=OutputAugmenter())`` or ``class MyAgent(DistillationMixin, PPOAgent): ...``.

At ~410 lines this module holds three independent aids (curriculum, output augmentation,
distillation) that share only the mixin protocol; each is short on its own.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from .policy import response_forward
from .base import Experience, OnPolicyAgent
from .rollout import RolloutBatch, mask_pad_logits


# ----------------------------------------------------------------------------------------------
# Curriculum
# ----------------------------------------------------------------------------------------------
class CurriculumScheduler:
    """Easy-to-hard prompt sampling, a ``prompt_sampler(n, progress, rng) -> indices`` for any agent.

    ``difficulty`` scores each prompt (lower = easier): ``"auto"`` reads each item's ``"difficulty"``
    field when every item has one and falls back to ``"length"``; ``"length"`` is the prompt's token
    count (``tokenizer`` given) or its word count; a sequence gives one score per prompt; a callable
    maps a prompt item to its score. At training progress ``p`` (0 -> 1) prompts are drawn uniformly
    from the easiest fraction ``start + (1 - start) * min(1, p / ramp)`` of the set: the
    ``start`` easiest at first, every prompt from ``p = ramp`` on.
    """

    def __init__(
        self,
        prompts: Any,
        difficulty: Literal["auto", "length"] | Sequence[float] | Callable[[dict], float] = "auto",
        start: float = 0.25,
        ramp: float = 0.75,
        tokenizer: Any = None,
    ) -> None:
        items = list(prompts.items if hasattr(prompts, "items") and not isinstance(prompts, dict) else prompts)
        items = [{"prompt": it} if isinstance(it, str) else it for it in items]
        if not items:
            raise ValueError("the curriculum needs at least one prompt")
        if not 0 < start <= 1 or ramp <= 0:
            raise ValueError(f"need 0 < start <= 1 and ramp > 0, got start={start}, ramp={ramp}")
        if isinstance(difficulty, str):
            if difficulty == "auto":
                difficulty = "field" if all("difficulty" in it for it in items) else "length"
            if difficulty == "field":
                scores = [float(it["difficulty"]) for it in items]
            elif difficulty == "length":
                scores = [len(tokenizer(it["prompt"])["input_ids"]) if tokenizer is not None else len(it["prompt"].split()) for it in items]
            else:
                raise ValueError(f"difficulty must be 'auto', 'length', 'field', a sequence or a callable, got {difficulty!r}")
        elif callable(difficulty):
            scores = [float(difficulty(it)) for it in items]
        else:
            scores = [float(s) for s in difficulty]
            if len(scores) != len(items):
                raise ValueError(f"{len(scores)} difficulty scores for {len(items)} prompts")
        self.scores = np.asarray(scores, dtype=np.float64)
        self.order = np.argsort(self.scores, kind="stable")  # easiest first
        self.start, self.ramp = start, ramp

    def fraction(self, progress: float) -> float:
        return self.start + (1.0 - self.start) * min(1.0, max(progress, 0.0) / self.ramp)

    def pool(self, progress: float) -> np.ndarray:
        """Indices of the prompts in play at ``progress``, easiest first."""
        n = max(1, math.ceil(self.fraction(progress) * len(self.order)))
        return self.order[:n]

    def __call__(self, n: int, progress: float, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.pool(progress), size=n, replace=True)


# ----------------------------------------------------------------------------------------------
# Experience helpers
# ----------------------------------------------------------------------------------------------
def concat_batches(a: RolloutBatch, b: RolloutBatch) -> RolloutBatch:
    """Episodes of ``a`` then ``b`` (same prompt and response widths)."""
    out = {}
    for f in fields(RolloutBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            out[f.name] = torch.cat([x, y])
        elif isinstance(x, list):
            out[f.name] = x + y
        else:  # gold_scores / values None on either side
            out[f.name] = None
    return RolloutBatch(**out)


def concat_experience(a: Experience, b: Experience) -> Experience:
    """Episodes of ``a`` then ``b``, including attributes that mixins add (e.g. teacher log-probs)."""
    out = {}
    for key, x in vars(a).items():
        y = getattr(b, key)
        out[key] = concat_batches(x, y) if isinstance(x, RolloutBatch) else torch.cat([x, y]) if isinstance(x, torch.Tensor) else x
    exp = Experience(**{f.name: out.pop(f.name) for f in fields(Experience)})
    for key, value in out.items():
        setattr(exp, key, value)
    return exp


# ----------------------------------------------------------------------------------------------
# Augmentation of high-reward outputs
# ----------------------------------------------------------------------------------------------
class OutputAugmenter:
    """Edits the best responses of a rollout into new training episodes, re-scored by the reward.

    The top ``top_fraction`` of the episodes by score (those above ``min_score`` if given) each give
    ``n_variants`` variants (rounded up to a multiple of the agent's group size for RLOO/GRPO, so
    the variants of one response form a group); a variant is the response with ``n_edits`` random
    edits among ``ops``: insert, delete or replace one unit (``unit="tokens"``: a token, drawn from
    the tokens of the selected responses; ``unit="words"``: a whitespace word, drawn from their
    words, and the text is re-tokenized). A stop token at the end stays there. Variants are scored
    with the env's reward (and gold judge) exactly as episodes are.

    They are off-policy samples that the update treats as if sampled (self-imitation of edited good
    outputs): their old log-probs and KL are computed like a rollout's, and their advantages follow
    the agent's rule, so a variant scoring worse than its original is pushed down, not up.

    Every call returns the same number of episodes, ``n_episodes`` (default: the most the settings
    can give, ``max(1, round(top_fraction * batch))`` responses times the variants per response), so
    that every rank of a ``torchrun`` run has a batch of one size and runs the same minibatches and
    collectives. How many variants a rollout really yields depends on its data (``min_score``, empty
    edits, a group that could not stay whole): the batch is trimmed to ``n_episodes`` (the variants of
    the best originals kept) or padded with episodes whose response mask is all zero. Padding adds
    nothing to any loss or statistic; ``batch.real`` marks the variants (True) and the padding (False).
    """

    OPS = ("insert", "delete", "replace")

    def __init__(
        self,
        top_fraction: float = 0.25,
        n_variants: int = 2,
        ops: Sequence[str] = OPS,
        unit: Literal["tokens", "words"] = "tokens",
        n_edits: int = 1,
        min_score: float | None = None,
        seed: int = 0,
        n_episodes: int | None = None,
    ) -> None:
        if not 0 < top_fraction <= 1 or n_variants < 1 or n_edits < 1:
            raise ValueError("need 0 < top_fraction <= 1, n_variants >= 1 and n_edits >= 1")
        if n_episodes is not None and (isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1):
            raise ValueError(f"n_episodes must be an integer >= 1 or None, got {n_episodes!r}")
        self.n_episodes = n_episodes
        if not ops or set(ops) - set(self.OPS):
            raise ValueError(f"ops must be a non-empty subset of {self.OPS}, got {ops!r}")
        if unit not in ("tokens", "words"):
            raise ValueError(f"unit must be 'tokens' or 'words', got {unit!r}")
        self.top_fraction, self.n_variants, self.ops, self.unit = top_fraction, n_variants, tuple(ops), unit
        self.n_edits, self.min_score = n_edits, min_score
        self.rng = np.random.default_rng(seed)

    def _edit(self, units: list, pool: list, max_len: int) -> list:
        units = list(units)
        for _ in range(self.n_edits):
            ops = [op for op in self.ops if not (op == "delete" and len(units) <= 1) and not (op == "insert" and len(units) >= max_len)]
            if not ops or not pool:
                break
            op = ops[self.rng.integers(len(ops))]
            if op == "insert":
                units.insert(int(self.rng.integers(len(units) + 1)), pool[self.rng.integers(len(pool))])
            elif op == "delete":
                del units[int(self.rng.integers(len(units)))]
            elif units:
                units[int(self.rng.integers(len(units)))] = pool[self.rng.integers(len(pool))]
        return units

    def variants_per_response(self, group_size: int = 1) -> int:
        """``n_variants``, rounded up to a multiple of ``group_size`` (the variants of one response form whole groups)."""
        return self.n_variants if group_size <= 1 else group_size * math.ceil(self.n_variants / group_size)

    def episodes_per_rollout(self, batch_size: int, group_size: int = 1) -> int:
        """The fixed size of every batch this augmenter returns for rollouts of ``batch_size`` episodes."""
        if self.n_episodes is not None:
            n = self.n_episodes
        else:
            n = max(1, round(self.top_fraction * batch_size)) * self.variants_per_response(group_size)
        if group_size > 1 and n % group_size:
            raise ValueError(f"n_episodes ({n}) must be a multiple of the group size ({group_size}): groups stay whole")
        return n

    def __call__(self, batch: RolloutBatch, env: Any, group_size: int = 1) -> RolloutBatch:
        """``episodes_per_rollout(len(batch), group_size)`` episodes: variants of ``batch``'s best
        episodes, then padding (see the class docstring)."""
        n_total = self.episodes_per_rollout(len(batch), group_size)
        tok, T = env.tokenizer, batch.response_ids.shape[1]
        stops = {int(i) for i in env.stop_token_ids}  # any stop token ends an episode, not only EOS
        special = set(tok.all_special_ids)
        order = torch.argsort(batch.scores, descending=True, stable=True).tolist()
        # As Python lists once: on a GPU, reading element by element would wait for the device each time.
        scores, lengths = batch.scores.tolist(), batch.lengths.tolist()
        chosen = [i for i in order[: max(1, round(self.top_fraction * len(batch)))]
                  if lengths[i] > 0 and (self.min_score is None or scores[i] >= self.min_score)]
        if not chosen:
            return self._scored_batch(batch, env, [], [], n_total)
        contents = {}  # row -> (content tokens without the final stop token, that stop token or None)
        response_ids = batch.response_ids.tolist()
        for i in chosen:
            ids = response_ids[i][: lengths[i]]
            stop = ids[-1] if ids and ids[-1] in stops else None
            contents[i] = (ids[:-1] if stop is not None else ids, stop)
        if self.unit == "tokens":
            pool = sorted({t for ids, _ in contents.values() for t in ids if t not in special})
        else:
            pool = sorted({w for ids, _ in contents.values() for w in tok.decode(ids, skip_special_tokens=True).split()})
        n_var = self.variants_per_response(group_size)
        rows, responses = [], []
        for i in chosen:
            ids, stop = contents[i]
            budget = T - int(stop is not None)  # room left for content tokens
            variants = []
            for _ in range(n_var):
                if self.unit == "tokens":
                    new = self._edit(ids, pool, budget)
                else:
                    words = self._edit(tok.decode(ids, skip_special_tokens=True).split(), pool, budget)
                    new = tok(" " + " ".join(words), add_special_tokens=False)["input_ids"] if words else []
                new = new[:budget] + ([stop] if stop is not None else [])
                if new:
                    variants.append(new)
            if group_size > 1 and len(variants) < n_var:
                continue  # a group must stay whole
            rows += [i] * len(variants)
            responses += variants
        # The variants of the best originals come first: trimming drops the worst originals' (whole groups,
        # as both counts are multiples of the group size).
        return self._scored_batch(batch, env, rows[:n_total], responses[:n_total], n_total)

    @staticmethod
    def _scored_batch(
        batch: RolloutBatch, env: Any, rows: list[int], responses: list[list[int]], n_total: int
    ) -> RolloutBatch:
        """The ``len(rows)`` variants scored by the env's reward, then ``n_total - len(rows)`` padding
        episodes (prompt of row 0, empty response, mask 0, score 0) that the reward never sees.

        The batch is on ``batch``'s device. Its responses are written on the CPU, row by row from
        Python lists, as the reward's scores come back (the reward runs on the CPU, inside the env),
        and moved to that device once, with the whole batch."""
        T, pad, tok = batch.response_ids.shape[1], env.pad_token_id, env.tokenizer
        device = batch.response_ids.device
        stops = {int(i) for i in env.stop_token_ids}
        n_real = len(rows)
        response_ids = torch.full((n_total, T), pad, dtype=torch.long)
        response_mask = torch.zeros(n_total, T)
        stopped = torch.zeros(n_total, dtype=torch.bool)
        texts = []
        for j, ids in enumerate(responses):
            response_ids[j, : len(ids)] = torch.as_tensor(ids)
            response_mask[j, : len(ids)] = 1
            stopped[j] = ids[-1] in stops
            texts.append(tok.decode(ids[:-1] if stopped[j] else ids, skip_special_tokens=True))
        score = torch.zeros(n_total)
        gold = torch.zeros(n_total) if batch.gold_scores is not None and getattr(env, "gold_reward", None) is not None else None
        if n_real:
            items = env.prompt_items() if hasattr(env, "prompt_items") else []
            prompts = [batch.prompt_texts[i] for i in rows]
            meta_items = [items[i] if i < len(items) and items[i] and items[i].get("prompt") == batch.prompt_texts[i]
                          else {"prompt": batch.prompt_texts[i], "id": batch.prompt_ids_str[i]} for i in rows]
            refs = [it.get("references") for it in meta_items]
            meta = [{"stopped": bool(s), "truncated": not bool(s), "num_tokens": len(ids), "prompt_id": it["id"], "item": it}
                    for s, ids, it in zip(stopped[:n_real].tolist(), responses, meta_items)]
            score[:n_real] = torch.as_tensor(np.asarray(env.reward(prompts, texts, references=refs, metadata=meta)), dtype=torch.float32)
            if gold is not None:
                gold[:n_real] = torch.as_tensor(np.asarray(env.gold_reward(prompts, texts, references=refs, metadata=meta)), dtype=torch.float32)
        src = rows + [0] * (n_total - n_real)  # padding borrows row 0's prompt (one prompt: its groups stay whole)
        idx = torch.as_tensor(src, dtype=torch.long, device=batch.prompt_ids.device)
        out = RolloutBatch(
            prompt_ids=batch.prompt_ids[idx].to(device), prompt_mask=batch.prompt_mask[idx].to(device),
            response_ids=response_ids.to(device), response_mask=response_mask.to(device),
            sample_logprobs=torch.zeros(n_total, T, device=device), scores=score.to(device), stopped=stopped.to(device),
            gold_scores=None if gold is None else gold.to(device), prompt_texts=[batch.prompt_texts[i] for i in src],
            response_texts=texts + [""] * (n_total - n_real), prompt_ids_str=[batch.prompt_ids_str[i] for i in src],
        )
        out.augmented = True  # read by agents whose running statistics must see real rollouts only
        out.real = torch.arange(n_total, device=device) < n_real  # False on the padding
        return out


class AugmentationMixin:
    """Adds edited variants of each rollout's best outputs to the update (see :class:`OutputAugmenter`).

    Metrics, the KL controller, the score statistics of ``score_scaling`` and the logged samples see
    the real rollout only; the update sees the rollout plus a fixed number of augmented episodes
    (``augmenter.episodes_per_rollout``: a rollout's ``batch_size`` episodes, then the augmented ones,
    in minibatches of ``minibatch_size``; the same count on every rank). Logged: ``aug_episodes``
    (variants, padding excluded) and ``aug_score`` (their mean score, NaN without any). The
    augmenter's random generator is saved in checkpoints with this rank's other random streams.
    """

    def __init__(self, *args: Any, augmenter: OutputAugmenter | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.augmenter = augmenter or OutputAugmenter(seed=self.config.seed)
        self.augmenter.episodes_per_rollout(self.config.batch_size, getattr(self.config, "group_size", 1))  # fail now if invalid

    def _update(self, exp: Experience) -> dict[str, float]:
        extra = self.augmenter(exp.batch, self.env, getattr(self.config, "group_size", 1))
        aug = self._make_experience(extra)
        stats = super()._update(concat_experience(exp, aug))
        real = extra.real
        n_real = int(real.sum())
        return {**stats, "aug_episodes": float(n_real), "aug_score": float(extra.scores[real].mean()) if n_real else float("nan")}

    def _rng_extra_state(self) -> dict[str, Any]:
        return {**super()._rng_extra_state(), "augmenter_rng": self.augmenter.rng.bit_generator.state}

    def _load_rng_extra(self, state: dict[str, Any]) -> None:
        super()._load_rng_extra(state)
        if "augmenter_rng" in state:
            self.augmenter.rng.bit_generator.state = state["augmenter_rng"]


# ----------------------------------------------------------------------------------------------
# Distillation from a teacher
# ----------------------------------------------------------------------------------------------
class DistillationMixin:
    """Adds ``distill_coef * KL`` between a frozen ``teacher`` and the policy, per response token.

    ``direction="forward"``: ``KL(teacher || student) = sum_v p_T(v) (log p_T(v) - log p_S(v))`` over
    the whole vocabulary, the classic distillation loss (Hinton et al., 2015) on the tokens the policy
    sampled; ``"reverse"``: ``KL(student || teacher)``, mode-seeking. Teacher and student share the
    env's tokenizer (a teacher with fewer embeddings than the vocabulary is refused) and the sampling
    temperature divides both logits. Token mean like the agent's loss; logged as ``distill_kl``.
    Teacher log-probs are computed once per rollout (``B x T x V`` floats are kept for the update).
    """

    def __init__(
        self, *args: Any, teacher: Any = None, distill_coef: float = 0.1,
        direction: Literal["forward", "reverse"] = "forward", **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if teacher is None:
            raise ValueError("DistillationMixin needs teacher=<a causal LM with the env's tokenizer>")
        if teacher.get_input_embeddings().num_embeddings < self.env.vocab_size:
            raise ValueError(
                f"mismatched tokenizers: the teacher has {teacher.get_input_embeddings().num_embeddings} embeddings, "
                f"the env's vocabulary {self.env.vocab_size} tokens"
            )
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        # On the agent's device, moved in place like the policy; its forwards share the agent's autocast.
        self.teacher = teacher.eval().requires_grad_(False).to(self.device)
        self.distill_coef, self.distill_direction = float(distill_coef), direction

    @torch.inference_mode()
    def _make_experience(self, batch: RolloutBatch) -> Experience:
        exp = super()._make_experience(batch)
        batch = exp.batch  # on the agent's device
        cfg, P = self.config, batch.prompt_ids.shape[1]
        ids, attn = batch.input_ids, batch.attention_mask
        parts = []
        for s in range(0, len(batch), cfg.micro_batch_size):
            logits, _ = response_forward(self.teacher, ids[s : s + cfg.micro_batch_size], attn[s : s + cfg.micro_batch_size], P,
                                         cfg.temperature, autocast_dtype=self.autocast_dtype)
            parts.append(self._distill_logprobs(logits))
        exp.teacher_logprobs = torch.cat(parts)
        return exp

    def _distill_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probs over the actions: the env's vocabulary without pad, which the policy never samples.

        The excluded column is clamped from -inf to the lowest float: with -inf in both teacher and
        student, ``p * (log p_T - log p_S)`` would be ``0 * (-inf + inf) = NaN`` instead of 0.
        """
        logits = logits[..., : self.env.vocab_size]
        pad = getattr(self.ac, "pad_token_id", None)
        logp = torch.log_softmax(mask_pad_logits(logits, pad) if pad is not None else logits, dim=-1)
        return logp.clamp(min=torch.finfo(logp.dtype).min)

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor):
        loss, out = super()._loss(exp, idx, n_tokens)
        student = self._distill_logprobs(out["logits"])
        teacher = exp.teacher_logprobs[idx]
        if self.distill_direction == "forward":
            kl = (teacher.exp() * (teacher - student)).sum(-1)
        else:
            kl = (student.exp() * (student - teacher)).sum(-1)
        distill = (kl * out["mask"]).sum() / n_tokens
        out["distill_kl"] = distill.detach()
        return loss + self.distill_coef * distill, out


def with_aids(agent_cls: type[OnPolicyAgent], *mixins: type) -> type[OnPolicyAgent]:
    """``agent_cls`` with ``mixins`` in front, e.g. ``with_aids(RLOOAgent, DistillationMixin)``."""
    name = "".join(m.__name__.removesuffix("Mixin") for m in mixins) + agent_cls.__name__
    return type(name, (*mixins, agent_cls), {})


__all__ = [
    "AugmentationMixin", "CurriculumScheduler", "DistillationMixin", "OutputAugmenter", "concat_batches",
    "concat_experience", "with_aids",
]
