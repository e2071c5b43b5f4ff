"""``learned``: a Hugging Face sequence-classification model with one output, read from a local folder.

Folder layout (what :func:`save_reward_model` writes and reward-model training produces)::

    config.json, model.safetensors, tokenizer files      # any AutoModelForSequenceClassification, num_labels=1
    tokengym_reward.json                                 # optional: {"mean": float, "std": float, "base_model": str, ...}

Score = ``(raw - mean) / std`` (``mean=0, std=1`` without the json file).

Input format: the (prompt, response) pair is encoded as a tokenizer *text pair*
(``tokenizer(prompt, response)``): ``[CLS] prompt [SEP] response [SEP]`` with segment ids for BERT-like
encoders, the plain concatenation (plus the tokenizer's own special tokens) for decoder models.
Over-long pairs are truncated from the left of the longer part, so the end of the response, where a
decoder reads its score, is always kept. Training must encode the same way: use :func:`encode_pairs`
and :func:`reward_logits`.

Where the score is read: encoders (BERT, MiniLM, ...) pool the first (CLS) token, decoders (GPT-2,
Llama, ...) read the last non-pad token. Encoders are therefore always fed right-padded batches;
decoders accept either side and get position ids counted from their first real token. Scores do not
depend on the padding side or on the batch size.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .base import RewardFunction

NORMALISATION_FILE = "tokengym_reward.json"


def reads_last_token(model) -> bool:
    """True for decoder-style classifiers (HF names their head ``score`` and reads the last non-pad token)."""
    import torch

    return isinstance(getattr(model, "score", None), torch.nn.Linear)


def scalar_head(model):
    """The ``Linear`` layer producing the scalar score (``score``, ``classifier`` or ``classifier.out_proj``)."""
    import torch

    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
        if isinstance(getattr(head, "out_proj", None), torch.nn.Linear):  # RoBERTa-style two-layer head
            return head.out_proj
    raise ValueError(f"cannot find the scalar head of {type(model).__name__} (no Linear 'score' or 'classifier')")


def _prepare_tokenizer(tokenizer, model) -> None:
    # A pad token is needed to batch; reuse unk, else eos (never read: the attention mask hides pads and
    # scores are taken at real tokens). The model must agree on the id, as decoders locate the last
    # real token by comparing input ids with config.pad_token_id.
    if tokenizer.pad_token_id is None:
        if tokenizer.unk_token_id is not None:
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ValueError("the reward tokenizer has no pad, unk or eos token to pad batches with")
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"


def encode_pairs(
    tokenizer,
    model,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int = 256,
    padding_side: Literal["left", "right"] = "right",
) -> dict:
    """Tokenize ``(prompt, response)`` pairs for ``model``: a dict of ``(batch, seq)`` long tensors.

    ``padding_side`` applies to decoders only; encoders are always right-padded (CLS must sit at index 0).
    Decoders also get ``position_ids`` counted from each row's first real token.
    """
    import torch

    decoder = reads_last_token(model)
    tokenizer.padding_side = padding_side if decoder else "right"
    enc = tokenizer(
        list(prompts), list(responses), padding=True, truncation="longest_first", max_length=max_length,
        return_tensors="pt",
    )
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if decoder:
        mask = batch["attention_mask"]
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(torch.long)
    return batch


def reward_logits(model, batch: dict):
    """Scalar scores ``(batch,)`` of an encoded batch (differentiable: training calls this too)."""
    return model(**batch).logits[:, 0]


def save_normalisation(path: str | os.PathLike, mean: float, std: float, **extra) -> None:
    """Write ``mean``/``std`` (plus ``extra`` keys) into ``path/tokengym_reward.json`` atomically,
    keeping other keys already there (e.g. ``base_model``)."""
    from tokengym.utils import atomic_write_text

    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"normalisation needs a finite mean and a positive std, got mean={mean}, std={std}")
    file = Path(path) / NORMALISATION_FILE
    data = json.loads(file.read_text()) if file.is_file() else {}
    data.update(extra, mean=float(mean), std=float(std))
    atomic_write_text(file, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_normalisation(path: str | os.PathLike) -> dict:
    """The folder's ``tokengym_reward.json`` (``{"mean": 0.0, "std": 1.0}`` when absent)."""
    file = Path(path) / NORMALISATION_FILE
    data = {"mean": 0.0, "std": 1.0}
    if file.is_file():
        try:
            loaded = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError) as e:  # name the file, not just the parser's position
            raise ValueError(f"{file}: not valid JSON ({e})") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: must hold a JSON object, got {type(loaded).__name__}")
        data.update(loaded)
    for key in ("mean", "std"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{file}: {key!r} must be a finite number, got {value!r}")
    if not (math.isfinite(data["mean"]) and math.isfinite(data["std"]) and data["std"] > 0):
        raise ValueError(f"{file}: needs a finite mean and a positive std, got {data['mean']}, {data['std']}")
    return data


class LearnedReward(RewardFunction):
    """Scores with a local sequence-classification model (``num_labels=1``), fp32, eval mode, no grad."""

    name = "learned"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
        padding_side: Literal["left", "right"] = "right",
    ) -> None:
        from tokengym import _offline  # noqa: F401  (offline switches before transformers loads)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"reward 'learned': {self.path} is not a Hugging Face model folder (no config.json)")
        from tokengym.models import quiet_loading

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        with quiet_loading():  # a saved reward model is complete: a LOAD REPORT here would be real news
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(device).float().eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward 'learned': {self.path} has {self.model.config.num_labels} labels; a reward model has 1")
        _prepare_tokenizer(self.tokenizer, self.model)
        self.device, self.batch_size, self.max_length, self.padding_side = device, batch_size, max_length, padding_side
        norm = load_normalisation(self.path)
        self.mean, self.std = float(norm["mean"]), float(norm["std"])
        self.info = norm

    def raw_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Unnormalised model outputs, float64 ``(batch,)``."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), self.batch_size):
                batch = encode_pairs(
                    self.tokenizer, self.model, prompts[i : i + self.batch_size], responses[i : i + self.batch_size],
                    self.max_length, self.padding_side,
                )
                out.append(reward_logits(self.model, {k: v.to(self.device) for k, v in batch.items()}).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def fit_normalisation(self, prompts: Sequence[str], responses: Sequence[str], apply: bool = True) -> tuple[float, float]:
        """Mean and (population) std of the raw scores on these samples; used from now on when ``apply``."""
        raw = self.raw_scores(prompts, responses)
        mean, std = float(raw.mean()), float(raw.std())
        if not std > 0:
            raise ValueError(f"reward 'learned': raw scores of {len(raw)} samples have zero spread; cannot normalise")
        if apply:
            self.mean, self.std = mean, std
        return mean, std

    save_normalisation = staticmethod(save_normalisation)

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        return (self.raw_scores(prompts, responses) - self.mean) / self.std


def new_reward_model(base: str | os.PathLike | None = None, seed: int | None = None):
    """``(tokenizer, model)``: a fresh 1-output sequence-classification model on top of ``base``.

    ``base``: ``None`` -> the all-MiniLM-L6-v2 encoder (``tokengym.models.default_encoder_dir()``),
    else ``"smollm2"``, a GGUF file or a local HF folder. The scalar head gets weights ~ N(0, 1/(hidden+1))
    and bias 0, so initial scores are small and unit-scale (PPO checklist item 12). Returned in eval mode.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tokengym.models import default_encoder_dir, quiet_loading, resolve_model_path

    path = default_encoder_dir() if base is None else resolve_model_path(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if seed is not None:
        torch.manual_seed(seed)
    # The base checkpoint has no scalar head, so transformers reports it MISSING on every build; that
    # report is expected and hidden, and any other missing weight is reported here instead.
    with quiet_loading(hide_report=True):
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, output_loading_info=True
        )
    head = scalar_head(model)
    head_names = {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}
    others = sorted(set(loading.get("missing_keys", ())) - head_names)
    if others:
        warnings.warn(f"reward model base {path}: weights missing from the checkpoint, newly initialised: {others[:8]}", stacklevel=2)
    with torch.no_grad():
        torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()
    model.config.problem_type = "regression"
    _prepare_tokenizer(tokenizer, model)
    return tokenizer, model.eval()


def save_reward_model(
    path: str | os.PathLike, tokenizer, model, *, mean: float = 0.0, std: float = 1.0, base_model: str = "", **extra
) -> Path:
    """Save a reward model folder (weights, tokenizer, ``tokengym_reward.json``) atomically; returns ``path``."""
    from tokengym.utils import atomic_directory

    path = Path(path)
    with atomic_directory(path, what="reward model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_normalisation(tmp, mean, std, base_model=str(base_model), **extra)
    return path
