"""Low-precision execution on the CPU: where plain bf16 autocast leaves time on the table.

Two measured sinks (SmolLM2-135M, one thread, an AVX512-BF16 CPU) and what is done about each:

* **weight casts in decode steps**: autocast casts every fp32 Linear weight to bf16 on every call.
  :func:`precast_linear_weights` casts them once per rollout instead (bit-identical outputs).
* **attention backward**: PyTorch's CPU flash-attention kernel is ~2x slower in bf16 than in fp32
  (13.3 vs 6.5 ms forward+backward for 8 x 9 heads x 64 x 64), the opposite of the matmuls.
  :func:`use_fp32_attention` runs attention itself in fp32 inside autocast (5.7 ms); the projections
  around it stay bf16, and attention is the part of the model where precision matters most anyway.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

#: The attention implementation name registered with transformers by :func:`use_fp32_attention`.
FP32_SDPA = "tokengym_fp32_sdpa"


def precast_linear_weights(model: nn.Module, dtype: torch.dtype,
                           include: Callable[[nn.Parameter], bool] | None = None) -> dict[str, torch.Tensor]:
    """``dtype`` copies of the weights and biases of every ``nn.Linear`` in ``model``, by module path.

    Autocast casts a Linear's fp32 weight to bf16 on every call. For a decode step at batch 16 that
    cast moves more bytes than the matmul itself (the whole model is read as fp32 and written as bf16,
    then read again), and autocast only caches the casts of weights that require gradients, within one
    context, so LoRA's frozen base weights, and an LM head tied to the frozen embeddings, are cast
    again every step. Casting them once per rollout and running the steps on the copies
    (:func:`run_on`) gives bit-identical outputs, because autocast would have made exactly these
    copies. An LM head tied to the input embeddings gets its own copy under the head's path; the
    embedding lookup keeps the fp32 table, as it does under plain autocast. ``include`` picks the
    parameters to cast (e.g. only the frozen ones); default all.
    """
    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        for p_name, p in (("weight", mod.weight), ("bias", mod.bias)):
            if p is not None and p.dtype == torch.float32 and (include is None or include(p)):
                out[f"{mod_name}.{p_name}" if mod_name else p_name] = p.detach().to(dtype)
    return out


def run_on(model: nn.Module, tensors: dict[str, torch.Tensor], **kwargs: Any) -> Any:
    """``model(**kwargs)`` with the parameters named in ``tensors`` replaced for this call only.

    Ties are not followed (``tie_weights=False``): a copy given for a tied LM head replaces the head's
    weight alone, never the embedding table it shares storage with. With nothing to replace (every
    fp32 forward) it is the plain call, without the reparametrisation.
    """
    if not tensors:
        return model(**kwargs)
    return torch.func.functional_call(model, tensors, args=(), kwargs=kwargs, strict=False, tie_weights=False)


def _fp32_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA attention with its inputs in fp32 and autocast off (a no-op on fp32 inputs)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def use_fp32_attention(model: Any) -> bool:
    """Switch ``model`` (a transformers model on SDPA attention) to :data:`FP32_SDPA`; True if switched.

    Only for CPU bf16 autocast: on a GPU the bf16 kernels are the fast ones. Models on another
    attention implementation are left alone. In fp32 the two implementations compute the same thing.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(FP32_SDPA, _fp32_sdpa)
    AttentionMaskInterface.register(FP32_SDPA, sdpa_mask)  # the same masks as SDPA
    model.set_attn_implementation(FP32_SDPA)
    return True
