"""Checkpoints of an on-policy agent: everything a resumed run needs to continue as the uninterrupted one.

A checkpoint is a directory written atomically (``tokengym.utils.atomic_directory``: a crash mid-save
leaves the previous checkpoint, never a half-written one):

* ``policy.safetensors`` -- the LoRA adapters (LoRA runs) or the whole policy (full fine-tuning);
* ``value_head.safetensors``;
* ``optimizer.pt`` -- Adam's state, read back with ``torch.load(weights_only=True)`` (no pickled code runs);
* ``rng.safetensors`` -- rank 0's sampling, shuffling and torch random streams;
* ``rng_rank{r}.safetensors`` -- in a ``torchrun`` run, each rank's own streams (its sampling seed
  differs), so every rank resumes its own sequence of samples;
* ``trainer_state.json`` -- iteration, KL controller, env / numpy / python random states, score
  statistics, non-finite counters, the reference's fingerprint, the config, and what an algorithm
  keeps between iterations (``agent._extra_state()``, e.g. REINFORCE's moving baseline).

The functions take the agent; ``OnPolicyAgent.save_checkpoint`` / ``load_checkpoint`` call them.
"""

from __future__ import annotations

import copy
import json
import random
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from tokengym import distributed as dist
from tokengym.utils import atomic_directory, atomic_write_text, recover_directory

if TYPE_CHECKING:
    from .base import OnPolicyAgent

# Keys of ``rank_rng_state``: tensors saved as safetensors, and the core JSON streams; any other key
# is a subclass's or mixin's (``agent._rng_extra_state()``), saved as JSON metadata of the rank file.
_RNG_TENSORS = ("sample", "torch")
_RNG_CORE = (*_RNG_TENSORS, "env_rng", "numpy_rng", "python_rng", "rank")


def trainable_state(agent: OnPolicyAgent) -> dict[str, torch.Tensor]:
    """The policy's trainable tensors (the LoRA adapters in a LoRA run), by parameter name."""
    return {k: v.detach().contiguous() for k, v in agent.ac.policy.named_parameters() if v.requires_grad}


def rank_rng_state(agent: OnPolicyAgent) -> dict[str, Any]:
    """This rank's random streams: they differ between ranks (the shuffle stream does not)."""
    return {"sample": agent.sample_gen.get_state(), "torch": torch.get_rng_state(),
            "env_rng": agent.env.np_random.bit_generator.state, "numpy_rng": _jsonable(np.random.get_state()),
            "python_rng": _jsonable(random.getstate()), **agent._rng_extra_state()}


def save_checkpoint(agent: OnPolicyAgent, path: str | Path) -> None:
    """Rank 0 writes the checkpoint atomically; in a distributed run it also writes every rank's
    random streams (gathered here) as ``rng_rank{r}.safetensors`` inside the same atomic directory."""
    rank_states = dist.all_gather_object(rank_rng_state(agent)) if dist.world_size() > 1 else []
    if agent.rank != 0:
        dist.barrier()
        return
    with atomic_directory(path, what="checkpoint") as tmp:
        for r, st in enumerate(rank_states):  # one file per rank: each resumes its own sampling stream
            meta = {k: json.dumps(v) for k, v in st.items() if k not in _RNG_TENSORS}
            save_file({"sample": st["sample"], "torch": st["torch"]}, tmp / f"rng_rank{r}.safetensors",
                      metadata={"rank": str(r), **meta})
        if agent.ac.uses_lora:
            save_file(trainable_state(agent), tmp / "policy.safetensors")
        else:
            save_model(agent.ac.policy, str(tmp / "policy.safetensors"))
        save_file(agent.ac.value_head.state_dict(), tmp / "value_head.safetensors")
        torch.save(agent.optimizer.state_dict(), tmp / "optimizer.pt")
        save_file({"sample": agent.sample_gen.get_state(), "shuffle": agent.shuffle_gen.get_state(),
                   "torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        state = {
            "iteration": agent.iteration,
            "total_iterations": agent.total_iterations,
            "kl_controller": agent.kl_ctl.state_dict(),
            "env_rng": agent.env.np_random.bit_generator.state,
            "env_seeded": agent.env_seeded,
            "numpy_rng": _jsonable(np.random.get_state()),
            "python_rng": _jsonable(random.getstate()),
            "rng_extra": agent._rng_extra_state(),
            "score_moments": agent.score_moments,
            "nonfinite_total": agent.nonfinite_total,
            # The streak counts skipped minibatches in a row: a resume must not forget two
            # skips just before the save and let a third bad one pass as the first.
            "nonfinite_streak": agent.nonfinite_streak,
            "stopped_at_kl": agent.stopped_at_kl,
            "rolled_back": agent.rolled_back,
            # A full fine-tuning checkpoint holds the policy but not the reference (a copy of the
            # model given to the agent): the fingerprint lets a resume check it got the same one.
            "reference_fingerprint": agent.ac.reference_fingerprint(),
            "world_size": dist.world_size(),
            "config": asdict(agent.config),
            "vocab_size": agent.env.vocab_size,
            "model_class": type(agent.ac.policy).__name__,
            "n_parameters": sum(p.numel() for p in agent.ac.policy.parameters()),
            "agent_state": agent._extra_state(),
        }
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=1))
    dist.barrier()


def _read_state(agent: OnPolicyAgent, path: Path) -> dict[str, Any]:
    """``trainer_state.json``, refused when it is corrupt or from another model or reference."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a tokengym checkpoint (no trainer_state.json)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not {"vocab_size", "n_parameters", "model_class"} <= state.keys():
            raise ValueError("trainer_state.json lacks vocab_size / n_parameters / model_class")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {path} is corrupt: {state_file.name}: {e}") from e
    ac, env = agent.ac, agent.env
    n_params = sum(p.numel() for p in ac.policy.parameters())
    if state["vocab_size"] != env.vocab_size or state["n_parameters"] != n_params or state["model_class"] != type(ac.policy).__name__:
        raise ValueError(
            f"checkpoint {path} is from another model ({state['model_class']}, {state['n_parameters']} parameters, "
            f"vocab {state['vocab_size']}); this run has {type(ac.policy).__name__}, {n_params} parameters, "
            f"vocab {env.vocab_size}"
        )
    saved_ref = state.get("reference_fingerprint")  # absent from checkpoints of earlier versions
    if saved_ref is not None and saved_ref != ac.reference_fingerprint():
        what = "base weights under the LoRA adapters" if ac.uses_lora else "reference model"
        raise ValueError(
            f"checkpoint {path} was trained against another {what} (fingerprint {saved_ref}, this agent's is "
            f"{ac.reference_fingerprint()}): resume with the original model the run started from, "
            "not the trained policy (e.g. a save_pretrained export) or another model of the same shape, "
            "or the KL penalty would be measured against the wrong reference"
        )
    return state


def load_checkpoint(agent: OnPolicyAgent, path: str | Path) -> None:
    """Restore everything :func:`save_checkpoint` wrote; refuses a checkpoint of another model."""
    path = Path(path)
    recover_directory(path)  # a save killed between its two renames left the previous one aside
    state = _read_state(agent, path)
    ac = agent.ac
    try:
        # Every file is read (the full policy's header checked against its size) before anything
        # is modified, so a truncated or corrupt checkpoint leaves this agent as it was.
        value_head = load_file(path / "value_head.safetensors")
        rng = load_file(path / "rng.safetensors")
        optimizer = torch.load(path / "optimizer.pt", weights_only=True)
        if ac.uses_lora:
            policy = load_file(path / "policy.safetensors")
        else:  # opening checks the header against the file size (catches a truncated file)
            with safe_open(str(path / "policy.safetensors"), framework="pt"):
                policy = None
        agent.optimizer.load_state_dict(optimizer)
        ac.value_head.load_state_dict(value_head)
        if ac.uses_lora:
            missing = ac.policy.load_state_dict(policy, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"unexpected keys {missing.unexpected_keys[:3]}")
        else:
            load_model(ac.policy, str(path / "policy.safetensors"))
    except Exception as e:  # safetensors / torch.load raise several types for a truncated/corrupt file
        raise ValueError(f"checkpoint {path} is corrupt or incompatible: {type(e).__name__}: {e}") from e
    agent.sample_gen.set_state(rng["sample"])
    agent.shuffle_gen.set_state(rng["shuffle"])
    torch.set_rng_state(rng["torch"])
    agent.iteration = state["iteration"]
    agent.total_iterations = state["total_iterations"]
    agent.kl_ctl.load_state_dict(state["kl_controller"])
    agent.env.np_random.bit_generator.state = state["env_rng"]
    agent.env_seeded = state["env_seeded"]
    np.random.set_state(_from_jsonable(state["numpy_rng"]))
    random.setstate(_from_jsonable(state["python_rng"]))
    agent.score_moments = state["score_moments"]
    agent.nonfinite_total = state["nonfinite_total"]
    agent.nonfinite_streak = int(state.get("nonfinite_streak", 0))
    agent.stopped_at_kl = state.get("stopped_at_kl")
    agent.rolled_back = bool(state.get("rolled_back", False))
    agent._load_rng_extra(state.get("rng_extra", {}))
    agent._load_extra_state(state.get("agent_state", {}))
    _load_rank_rng(agent, path, state)
    agent.logger.truncate_after(agent.iteration)


def _load_rank_rng(agent: OnPolicyAgent, path: Path, state: dict[str, Any]) -> None:
    """Restore this rank's random streams from ``rng_rank{rank}.safetensors``, so that each rank of a
    ``torchrun`` run goes on sampling where it stopped. Resuming with another number of ranks: a rank
    without its file derives fresh streams from (seed, rank, iteration), deterministic but not the
    ones an uninterrupted run would have used."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != dist.world_size():
        warnings.warn(f"resuming a checkpoint of {saved_world} process(es) with {dist.world_size()}: "
                      "ranks without saved random streams derive new ones", RuntimeWarning, stacklevel=4)
    rank_file = path / f"rng_rank{agent.rank}.safetensors"
    if rank_file.is_file():
        try:
            with safe_open(str(rank_file), framework="pt") as f:
                meta = f.metadata()
                sample, torch_rng = f.get_tensor("sample"), f.get_tensor("torch")
            env_rng, numpy_rng, python_rng = (json.loads(meta[k]) for k in ("env_rng", "numpy_rng", "python_rng"))
            extra = {k: json.loads(v) for k, v in meta.items() if k not in _RNG_CORE}
        except Exception as e:  # safetensors raises several types for a truncated/corrupt file
            raise ValueError(f"checkpoint {path} is corrupt: {rank_file.name}: {type(e).__name__}: {e}") from e
        agent.sample_gen.set_state(sample)
        torch.set_rng_state(torch_rng)
        agent.env.np_random.bit_generator.state = env_rng
        np.random.set_state(_from_jsonable(numpy_rng))
        random.setstate(_from_jsonable(python_rng))
        agent._load_rng_extra(extra)
    elif agent.rank > 0:  # the shared files hold rank 0's streams: derive this rank's
        key = [agent.config.seed, agent.rank, agent.iteration]
        agent.sample_gen.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))
        agent.env.np_random.bit_generator.state = np.random.default_rng(key).bit_generator.state


def save_pretrained(agent: OnPolicyAgent, path: str | Path) -> None:
    """Save the trained policy (LoRA merged) so ``transformers`` loads it with ``from_pretrained``."""
    model = agent.ac.policy
    if agent.ac.uses_lora:
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_directory(path, what="policy") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        agent.env.tokenizer.save_pretrained(tmp)


def _jsonable(x: Any) -> Any:
    """numpy / python random states as JSON: arrays and tuples tagged so :func:`_from_jsonable` restores them."""
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, tuple):
        return {"__tuple__": [_jsonable(v) for v in x]}
    return x


def _from_jsonable(x: Any) -> Any:
    if isinstance(x, dict) and "__ndarray__" in x:
        return np.asarray(x["__ndarray__"], dtype=x["dtype"])
    if isinstance(x, dict) and "__tuple__" in x:
        return tuple(_from_jsonable(v) for v in x["__tuple__"])
    return x


__all__ = ["load_checkpoint", "rank_rng_state", "save_checkpoint", "save_pretrained", "trainable_state"]
