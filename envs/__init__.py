"""Token-level text generation environments."""

from .prompts import PromptFileError, PromptSource, load_prompt_file, load_prompts
from .text_env import TextGenerationEnv
from .vector import BatchedTextEnv

__all__ = [
    "BatchedTextEnv",
    "PromptFileError",
    "PromptSource",
    "TextGenerationEnv",
    "load_prompt_file",
    "load_prompts",
]
