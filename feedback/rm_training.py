"""Reward-model training from the feedback store (``tokengym train-rm``).

The model is a 1-output sequence classifier on a local encoder (all-MiniLM-L6-v2 by default) that
scores the text pair ``(prompt, response)``. Training follows Stiennon et al. / InstructGPT:

* the head starts at N(0, 1/(d+1)) with bias 0 (small, unit-scale initial rewards);
* about one epoch, AdamW with the learning rate annealed linearly to 0 (more epochs overfit);
* a ranking of K is one batch item contributing all C(K,2) pairs (:func:`~.losses.kwise_loss`);
* held-out prompts (not just held-out pairs) measure pairwise accuracy, so a model that memorised
  the training responses gets no credit;
* normalisation statistics come from reference-policy samples (candidates of round 0 by default),
  so the reward the PPO agent sees starts at mean 0, std 1 under the initial policy.

The output folder is what ``tokengym.rewards.LearnedReward`` loads (written atomically). It must be
new, empty or a folder tokengym wrote (checked before training, see ``tokengym.utils.check_replaceable``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tokengym import distributed as dist

from .errors import FeedbackError
from .losses import best_of_n_loss, kwise_loss, pairwise_loss, pointwise_loss
from .store import FeedbackStore

RANKING_LOSSES = ("kwise", "best_of_n")
JUDGEMENT_KINDS = ("compare", "rank", "score")
MIN_MAX_LENGTH = 8


@dataclass(frozen=True)
class PairItem:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class RankItem:
    """Responses best first. Trained with the K-wise loss, or best-of-N (only the winner matters)."""

    prompt: str
    responses: tuple[str, ...]


@dataclass(frozen=True)
class ScoreItem:
    prompt: str
    response: str
    target: float  # the score rescaled to [-1, 1]


Item = PairItem | RankItem | ScoreItem


@dataclass
class RMConfig:
    """Training settings; the defaults are the issue's recipe (one epoch, linear decay to 0)."""

    base_model: str | None = None  # None: all-MiniLM-L6-v2 from its wheel
    epochs: float = 1.0
    lr: float = 3e-4  # tuned for the default MiniLM (22M) over ~60 steps; use ~1e-5 for larger bases
    batch_size: int = 32  # judgements (pairs, rankings or scores) per optimiser step
    max_length: int = 64
    margin: float = 0.0
    ranking_loss: str = "kwise"
    kinds: tuple[str, ...] = ("compare", "rank", "score")
    heldout_fraction: float = 0.1  # of prompts
    reference_round: int | None = 0  # candidates whose scores set mean/std; None = all candidates
    dropout: bool = False  # off by default: with ~one epoch of data it mostly slows learning
    # True: a batch is made of whole prompts (every judgement of a prompt in the same step, up to
    # ``batch_size`` judgements, at least one prompt), and each distinct response is scored once in it.
    # With K candidates a prompt has up to C(K,2) pairs but only K responses, so this costs K forwards
    # instead of K(K-1), and each response gets one combined gradient per epoch instead of K-1 separate
    # ones in different steps (which overfits a response seen many times).
    group_by_prompt: bool = False
    # "auto": bf16 autocast for the training forwards where the CPU runs bf16 fast (AMX/AVX512-BF16,
    # measured once per machine) and fp32 elsewhere; the weights, AdamW and the loss stay fp32, and
    # scoring (accuracy, normalisation, later the reward itself) is always fp32.
    dtype: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        """Refuse settings that would fail late or train nothing, naming the field."""
        def bad(name: str, rule: str) -> FeedbackError:
            return FeedbackError(f"RMConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (number(self.epochs) and self.epochs > 0):
            raise bad("epochs", "a positive number")
        if not (number(self.lr) and self.lr > 0):
            raise bad("lr", "a positive number")
        if not (integer(self.batch_size) and self.batch_size >= 1):
            raise bad("batch_size", "a positive integer")
        if not (integer(self.max_length) and self.max_length >= MIN_MAX_LENGTH):
            raise bad("max_length", f"an integer >= {MIN_MAX_LENGTH} (room for the special tokens and some text)")
        if not (number(self.margin) and self.margin >= 0):
            raise bad("margin", "a number >= 0")
        if self.ranking_loss not in RANKING_LOSSES:
            raise bad("ranking_loss", f"one of {RANKING_LOSSES}")
        if not self.kinds or not set(self.kinds) <= set(JUDGEMENT_KINDS):
            raise bad("kinds", f"a non-empty subset of {JUDGEMENT_KINDS}")
        if not (number(self.heldout_fraction) and 0 <= self.heldout_fraction < 1):
            raise bad("heldout_fraction", "in [0, 1) (1 would hold out every prompt)")
        if self.reference_round is not None and not (integer(self.reference_round) and self.reference_round >= 0):
            raise bad("reference_round", "None (all candidates) or an integer >= 0")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise bad("dtype", "'auto', 'fp32' or 'bf16'")


@dataclass
class RMResult:
    path: Path | None
    n_train: int
    n_heldout_pairs: int
    heldout_accuracy: float  # vs the held-out judgements
    heldout_gold_accuracy: float | None  # vs the gold judge, when one was given
    mean: float
    std: float
    losses: list[float] = field(default_factory=list)

    def summary(self) -> str:
        gold = "n/a" if self.heldout_gold_accuracy is None else f"{self.heldout_gold_accuracy:.3f}"
        return (f"trained on {self.n_train} judgements; held-out pairwise accuracy {self.heldout_accuracy:.3f} "
                f"(vs labels, {self.n_heldout_pairs} pairs), vs gold judge {gold}; "
                f"normalisation mean={self.mean:.4f} std={self.std:.4f}")


# ------------------------------------------------------------------------------------- data
def store_items(store: FeedbackStore, kinds: Sequence[str]) -> list[tuple[int, Item]]:
    """``(prompt_id, item)`` for every usable judgement (ties carry no preference and are skipped)."""
    prompts = {p.id: p.text for p in store.prompts()}
    texts = {c.id: c.text for c in store.candidates()}
    lo, hi = store.score_range
    out: list[tuple[int, Item]] = []
    if "compare" in kinds:
        for c in store.comparisons():
            if c.outcome != "tie":
                win, lose = (c.candidate_a, c.candidate_b) if c.outcome == "a" else (c.candidate_b, c.candidate_a)
                out.append((c.prompt_id, PairItem(prompts[c.prompt_id], texts[win], texts[lose])))
    if "rank" in kinds:
        out += [(r.prompt_id, RankItem(prompts[r.prompt_id], tuple(texts[i] for i in r.candidate_ids)))
                for r in store.rankings()]
    if "score" in kinds:
        cand_prompt = {c.id: c.prompt_id for c in store.candidates()}
        for s in store.scores():
            pid = cand_prompt[s.candidate_id]
            out.append((pid, ScoreItem(prompts[pid], texts[s.candidate_id], 2 * (s.value - lo) / (hi - lo) - 1)))
    return out


def split_by_prompt(items: list[tuple[int, Item]], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Hold out whole prompts, so held-out accuracy measures generalisation to unseen prompts."""
    pids = sorted({pid for pid, _ in items})
    n_held = int(round(fraction * len(pids)))
    if fraction > 0 and len(pids) >= 2:
        n_held = min(max(n_held, 1), len(pids) - 1)
    held = set(np.random.default_rng(seed).permutation(pids)[:n_held].tolist())
    return [it for pid, it in items if pid not in held], [it for pid, it in items if pid in held]


def comparison_pairs(items: Sequence[Item]) -> list[PairItem]:
    """Every preference implied by the items (rankings expand to all pairs, scores to unequal pairs)."""
    pairs: list[PairItem] = []
    scored: dict[str, list[ScoreItem]] = {}
    for it in items:
        if isinstance(it, PairItem):
            pairs.append(it)
        elif isinstance(it, RankItem):
            r = it.responses
            pairs += [PairItem(it.prompt, r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]
        else:
            scored.setdefault(it.prompt, []).append(it)
    for group in scored.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.target != b.target:
                    win, lose = (a, b) if a.target > b.target else (b, a)
                    pairs.append(PairItem(a.prompt, win.response, lose.response))
    return pairs


# ------------------------------------------------------------------------------------ model
def build_reward_model(base: str | os.PathLike | None = None, seed: int = 0) -> tuple[Any, Any]:
    """``(tokenizer, model)``: a fresh reward model on ``base`` (see ``tokengym.rewards.learned``)."""
    from tokengym.rewards.learned import new_reward_model

    return new_reward_model(base, seed=seed)


def tiny_reward_model(hidden: int = 32, layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """A small random BERT reward model with the MiniLM tokenizer (tests, smoke runs; no weights read)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tokengym.models import default_encoder_dir

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_dir())
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    init_head(model)
    return tokenizer, model.eval()


def init_head(model: Any) -> None:
    """Re-initialise the scalar head: weights N(0, 1/(d+1)), bias 0 (for models built in code)."""
    from tokengym.rewards.learned import scalar_head

    head = scalar_head(model)
    with torch.no_grad():
        torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()


class RewardModelTrainer:
    """Trains one reward model on items; scoring and accuracy use the loader's exact encoding."""

    def __init__(self, tokenizer: Any, model: Any, config: RMConfig) -> None:
        if config.ranking_loss not in RANKING_LOSSES:
            raise FeedbackError(f"ranking_loss must be one of {RANKING_LOSSES}, got {config.ranking_loss!r}")
        self.tokenizer, self.model, self.config = tokenizer, model, config
        from tokengym.hardware import resolve_dtype

        #: the training forwards' autocast dtype (None: fp32)
        dtype = resolve_dtype(config.dtype, torch.device("cpu"), setting="RMConfig.dtype")
        self.autocast_dtype = None if dtype == torch.float32 else dtype
        if self.autocast_dtype is not None:
            from tokengym.agents.precision import use_fp32_attention

            use_fp32_attention(model)  # CPU bf16 attention kernels are slower than fp32 ones

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Raw rewards ``(B,)`` with gradients (the caller chooses train/eval mode)."""
        from tokengym.rewards.learned import encode_pairs, reward_logits

        batch = encode_pairs(self.tokenizer, self.model, prompts, responses, self.config.max_length)
        return reward_logits(self.model, batch)

    def batch_loss(self, items: Sequence[Item]) -> torch.Tensor:
        """Mean loss of the items, every distinct ``(prompt, response)`` of the batch scored once in one
        forward pass (a response in several pairs of the batch shares its score and its gradient)."""
        index: dict[tuple[str, str], int] = {}
        rows = []  # per item, the indices of its texts in the forward batch
        for it in items:
            texts = ((it.chosen, it.rejected) if isinstance(it, PairItem)
                     else it.responses if isinstance(it, RankItem) else (it.response,))
            rows.append(torch.tensor([index.setdefault((it.prompt, t), len(index)) for t in texts]))
        from tokengym.agents.rollout import autocast_context

        with autocast_context("cpu", self.autocast_dtype):
            r = self.rewards([p for p, _ in index], [t for _, t in index])
        r = r.float()  # the loss in fp32 whatever the forward's precision
        losses = []
        for it, idx in zip(items, rows):
            ri = r[idx]
            if isinstance(it, PairItem):
                losses.append(pairwise_loss(ri[:1], ri[1:], self.config.margin))
            elif isinstance(it, RankItem) and self.config.ranking_loss == "kwise":
                losses.append(kwise_loss(ri, self.config.margin))
            elif isinstance(it, RankItem):
                losses.append(best_of_n_loss(ri, 0))
            else:
                losses.append(pointwise_loss(ri, torch.tensor([it.target], dtype=r.dtype)))
        return torch.stack(losses).mean()

    def epoch_batches(self, items: Sequence[Item], rng: np.random.Generator) -> list[list[int]]:
        """One epoch of shuffled batches of item indices (whole prompts per batch with ``group_by_prompt``)."""
        bs = self.config.batch_size
        if not self.config.group_by_prompt:
            order = rng.permutation(len(items)).tolist()
            return [order[i:i + bs] for i in range(0, len(order), bs)]
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.prompt, []).append(i)
        members = list(groups.values())
        batches: list[list[int]] = [[]]
        for g in rng.permutation(len(members)).tolist():
            group = members[g]
            if batches[-1] and len(batches[-1]) + len(group) > bs:
                batches.append([])
            batches[-1] += group
        return batches

    def fit(self, items: Sequence[Item], log: Callable[[str], None] | None = None) -> list[float]:
        """About ``epochs`` passes over shuffled items; LR decays linearly to 0. Returns step losses."""
        cfg = self.config
        if not items:
            raise FeedbackError("no training judgements (ties alone carry no preference)")
        rng = np.random.default_rng(cfg.seed)
        batches = self.epoch_batches(items, rng)
        total = max(1, math.ceil(cfg.epochs * len(batches)))
        # Under torchrun every rank starts from rank 0's weights and trains on its share
        # of each global batch of ``batch_size`` judgements; gradients are averaged over ranks.
        dist.broadcast_module(self.model)
        rank, world = dist.rank(), dist.world_size()
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
        losses: list[float] = []
        self.model.train(cfg.dropout)  # BERT-like encoders differ between modes only by dropout
        for step in range(total):
            if not batches:
                batches = self.epoch_batches(items, rng)
            batch = [items[i] for i in batches.pop(0)]
            shard = batch[rank::world]  # weighted so the ranks' mean is the batch mean
            loss = self.batch_loss(shard) * (len(shard) * world / len(batch)) if shard else None
            opt.zero_grad()
            if loss is not None:
                loss.backward()
            dist.all_reduce_grads(list(self.model.parameters()))
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(dist.all_reduce_sum(loss.item() if loss is not None else 0.0, torch.float64).item() / world)
            if log and (step % 10 == 0 or step == total - 1):
                log(f"step {step + 1}/{total} loss {np.mean(losses[-10:]):.4f}")
        self.model.eval()
        return losses

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.model.eval()
        out = [self.rewards(prompts[i:i + batch_size], responses[i:i + batch_size]).double().numpy()
               for i in range(0, len(prompts), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def pairwise_accuracy(self, pairs: Sequence[PairItem]) -> float:
        """Share of pairs whose chosen response gets the higher reward (exact ties count half)."""
        if not pairs:
            return math.nan
        rc = self.score([p.prompt for p in pairs], [p.chosen for p in pairs])
        rr = self.score([p.prompt for p in pairs], [p.rejected for p in pairs])
        return float(np.mean((rc > rr) + 0.5 * (rc == rr)))


# ------------------------------------------------------------------------------------ entry
def gold_pairs(pairs: Sequence[PairItem], judge: Callable[..., Sequence[float]]) -> list[PairItem]:
    """The same pairs oriented by the gold judge (pairs it ties are dropped)."""
    gc = np.asarray(judge([p.prompt for p in pairs], [p.chosen for p in pairs]), dtype=np.float64)
    gr = np.asarray(judge([p.prompt for p in pairs], [p.rejected for p in pairs]), dtype=np.float64)
    return [p if a > b else PairItem(p.prompt, p.rejected, p.chosen) for p, a, b in zip(pairs, gc, gr) if a != b]


def train_reward_model(
    store: FeedbackStore, out_dir: str | os.PathLike | None, config: RMConfig | None = None,
    judge: Callable[..., Sequence[float]] | None = None, model: tuple[Any, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> RMResult:
    """Train on the store's judgements and save to ``out_dir`` (skipped when None).

    ``model``: an already built ``(tokenizer, model)`` (its head is re-initialised); default builds one
    on ``config.base_model``. ``judge``: a gold judge for the extra held-out accuracy against it.
    """
    from tokengym.utils import check_replaceable, seed_everything

    cfg = config or RMConfig()
    cfg.validate()
    if out_dir is not None and dist.rank() == 0:
        check_replaceable(out_dir)  # a user's folder is refused now, not replaced after training
    log = log if dist.rank() == 0 else None  # rank 0 alone prints and writes
    seed_everything(cfg.seed)
    train, held = split_by_prompt(store_items(store, cfg.kinds), cfg.heldout_fraction, cfg.seed)
    if model is None:
        tokenizer, net = build_reward_model(cfg.base_model, cfg.seed)
    else:
        tokenizer, net = model
        init_head(net)
    trainer = RewardModelTrainer(tokenizer, net, cfg)
    losses = trainer.fit(train, log)
    held_pairs = comparison_pairs(held)
    acc = trainer.pairwise_accuracy(held_pairs)
    gold_acc = trainer.pairwise_accuracy(gold_pairs(held_pairs, judge)) if judge is not None and held_pairs else None
    mean, std = reference_statistics(store, trainer, cfg.reference_round)
    result = RMResult(None, len(train), len(held_pairs), acc, gold_acc, mean, std, losses)
    if log:
        log(result.summary())
    if out_dir is not None and dist.rank() != 0:
        result.path = Path(out_dir)
    elif out_dir is not None:
        from tokengym.rewards.learned import save_reward_model

        base = cfg.base_model or "all-MiniLM-L6-v2"
        training = {"n_train": len(train), "heldout_pairs": len(held_pairs), "heldout_accuracy": acc,
                    "heldout_gold_accuracy": gold_acc, "max_length": cfg.max_length, "epochs": cfg.epochs,
                    "lr": cfg.lr, "ranking_loss": cfg.ranking_loss,
                    "train_dtype": "fp32" if trainer.autocast_dtype is None else "bf16"}
        result.path = save_reward_model(out_dir, tokenizer, net, mean=mean, std=std, base_model=str(base),
                                        input_format="pair", training=training)
    return result


def reference_statistics(store: FeedbackStore, trainer: RewardModelTrainer, round: int | None) -> tuple[float, float]:
    """Mean and std of raw rewards on reference-policy samples (candidates of ``round``)."""
    cands = store.candidates(round=round) or store.candidates()
    prompts = {p.id: p.text for p in store.prompts()}
    raw = trainer.score([prompts[c.prompt_id] for c in cands], [c.text for c in cands])
    std = float(raw.std())
    if not (len(raw) >= 2 and std > 0):
        raise FeedbackError(f"cannot normalise: {len(raw)} reference samples with raw-score std {std}")
    return float(raw.mean()), std
