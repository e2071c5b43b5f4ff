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
