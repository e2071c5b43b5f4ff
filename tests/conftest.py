"""Shared fixtures for the env / rollout / PPO tests: tiny models, toy and SmolLM2 tokenizers.

Session-scoped models are for read-only use (rollouts, forwards). A test that trains a model (PPO)
must build its own with the ``make_toy_lm`` / ``make_smol_lm`` factories, because ``PPOAgent``
updates the model it is given in place.
"""

from __future__ import annotations

import os

# "auto" means the CPU in fp32 for the suite, on any machine: many tests check fp32 exactness
# (ratios of exactly 1, bit-exact resumes). A GPU machine can still run tests on CUDA by setting
# TOKENGYM_DEVICE=cuda (bench/gpu_check.sh does, for the device tests).
os.environ.setdefault("TOKENGYM_DEVICE", "cpu")
os.environ.setdefault("TOKENGYM_DTYPE", "fp32")

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import tokengym  # noqa: F401  (registers the Gymnasium ids)
from tokengym.models import load_tokenizer, make_tiny_causal_lm, prepare_tokenizer
from tokengym.testing import make_toy_tokenizer


@pytest.fixture(scope="session")
def toy_tok():
    """The 40-word word-level tokenizer (pad=0, eos=1, unk=2, bos=3)."""
    return make_toy_tokenizer()


@pytest.fixture(scope="session")
def toy_lm(toy_tok):
    """(toy tokenizer, tiny tied llama) for read-only use."""
    return make_tiny_causal_lm(toy_tok, hidden=32, n_layers=1, n_heads=2, seed=0)


@pytest.fixture
def make_toy_lm(toy_tok):
    """Factory of fresh tiny llamas on the toy tokenizer (for tests that train)."""

    def make(hidden: int = 32, n_layers: int = 1, n_heads: int = 2, seed: int = 0, arch: str = "llama"):
        return make_tiny_causal_lm(toy_tok, arch=arch, hidden=hidden, n_layers=n_layers, n_heads=n_heads, seed=seed)[1]

    return make


@pytest.fixture(scope="session")
def smol_tok():
    """The real SmolLM2 tokenizer (49152 tokens, pad=<|endoftext|> != eos=<|im_end|>)."""
    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def smol_tiny_llama(smol_tok):
    """(SmolLM2 tokenizer, tiny randomly initialised llama) for read-only use."""
    return make_tiny_causal_lm(smol_tok, arch="llama", hidden=32, n_layers=2, n_heads=2, seed=0)


@pytest.fixture
def make_smol_lm(smol_tok):
    def make(hidden: int = 32, n_layers: int = 1, n_heads: int = 2, seed: int = 0, arch: str = "llama"):
        return make_tiny_causal_lm(smol_tok, arch=arch, hidden=hidden, n_layers=n_layers, n_heads=n_heads, seed=seed)[1]

    return make


def _untied_tiny_lm(tokenizer, arch: str = "llama", hidden: int = 32, n_layers: int = 2, n_heads: int = 2, seed: int = 0):
    """A tiny causal LM whose LM head is *not* tied to the input embeddings.

    With an untied head one row of ``lm_head.weight`` (e.g. the EOS row) can be edited without
    changing what the model reads, which lets tests make greedy decoding emit EOS on purpose.
    """
    prepare_tokenizer(tokenizer)
    torch.manual_seed(seed)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=256,
            tie_word_embeddings=False, **ids,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(tokenizer), n_embd=hidden, n_layer=n_layers, n_head=n_heads, n_positions=256,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, **ids,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


@pytest.fixture(scope="session")
def untied_lm():
    """Factory ``untied_lm(tokenizer, arch="llama"|"gpt2", ...)`` of tiny LMs with an untied LM head."""
    return _untied_tiny_lm


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch work on one thread, restoring the setting afterwards.

    The test machines are small and shared: with two busy cores, torch's intra-op thread pool
    spins and a tiny-model PPO iteration goes from ~0.15 s (one thread) to several seconds.
    Results do not depend on it; only the wall time does.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
