"""Tiny, file-free building blocks for tests and toy tasks: a word-level tokenizer trained in code
and a matching tiny causal LM. A 40-word vocabulary makes toy rewards learnable in seconds on CPU
(with a 49k-token vocabulary a random model almost never emits a target token)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TOY_WORDS = (
    "good bad movie film plot actor scene great boring story the a is was and it i liked hated music "
    "fun dull long short happy sad love hate best worst ending start funny slow fast light dark red blue"
).split()


def make_toy_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` with ``<pad>``, ``<eos>``, ``<unk>``, ``<bos>``."""
    words = words or TOY_WORDS
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<unk>", "<bos>"], min_frequency=1)
    tok.train_from_iterator([" ".join(words)] * 2, trainer=trainer)
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<bos>"
    )
    fast.padding_side = "left"
    return fast


TOY_PROMPTS = [
    "the movie was", "i liked the", "the plot is", "a film and", "the actor was", "the story is",
    "the ending was", "it was a", "the music is", "the scene was", "a long film", "the start was",
]


def tiny_train_config(folder, **overrides) -> dict:
    """A ``make_train_config`` mapping for a seconds-long ``tokengym train`` run on the toy task.

    Saves a tiny Llama with the toy tokenizer to ``folder/policy`` and the toy prompts to
    ``folder/p.txt``; the run writes ``folder/run`` (``output_dir``). Top-level keys in ``overrides``
    replace the defaults, and ``ppo=`` is merged into the small PPO section.
    """
    from pathlib import Path

    from tokengym.models import make_tiny_causal_lm

    folder = Path(folder)
    tok, lm = make_tiny_causal_lm(make_toy_tokenizer(), hidden=16, n_layers=1, n_heads=2)
    lm.save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    (folder / "p.txt").write_text("\n".join(TOY_PROMPTS) + "\n")
    ppo = {"batch_size": 2, "minibatch_size": 2, "micro_batch_size": 2, "ppo_epochs": 1, "checkpoint_every": 0,
           "sample_every": 0, **overrides.pop("ppo", {})}
    return {"env": "tokengym/TextGeneration-v0", "model": str(folder / "policy"), "reward": "length",
            "prompts": str(folder / "p.txt"), "max_new_tokens": 2, "max_prompt_tokens": 4, "eval_episodes": 2,
            "threads": 1, "iterations": 1, "output_dir": str(folder / "run"), **overrides, "ppo": ppo}
