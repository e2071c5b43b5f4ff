"""Worker of ``tests/test_distributed.py``, launched with ``python -m torch.distributed.run`` (torchrun).

    check OUT B        one PPO update on this rank's half of OUT/batch.pt, then one full iteration
                       (own sampling), then a reward-model ``fit`` on rm_items(); writes
                       OUT/check_rank{r}.pt for the test to compare.
    train OUT ITERS    ``agent.learn(ITERS)`` with a checkpoint every iteration under OUT/run;
                       ``--resume`` loads OUT/run/checkpoint first; ``--hang-after K`` marks and
                       sleeps after iteration K (the test SIGKILLs the run there).

Not collected by pytest (no ``test_`` prefix). Tiny model and toy tokenizer, one thread per process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

from tokengym import distributed as dist
from tokengym.agents import PPOAgent, PPOConfig, RolloutBatch
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS, make_toy_tokenizer

T, P = 6, 4


def good_share(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1)


def make_env(tok, n: int) -> BatchedTextEnv:
    return BatchedTextEnv(n, tokenizer=tok, prompts=TOY_PROMPTS, split=None, max_new_tokens=T, max_prompt_tokens=P, reward=good_share)


def check_config(batch: int) -> PPOConfig:
    """One minibatch of the whole (local) batch and one epoch: the update does not depend on the
    minibatch order, so N ranks x B/N episodes can be compared with 1 process x B episodes."""
    return PPOConfig(batch_size=batch, minibatch_size=batch, micro_batch_size=max(1, batch // 2), ppo_epochs=1, lora_r=0,
                     learning_rate=1e-2, anneal_lr=False, kl_coef=0.2, kl_target=0.5, kl_horizon=100,
                     sample_every=0, ratio_threshold=None)


def rows(batch: RolloutBatch, sl: slice) -> RolloutBatch:
    """The episodes ``sl`` of ``batch``."""
    kw = {}
    for name, value in vars(batch).items():
        kw[name] = value[sl] if value is not None else None
    return RolloutBatch(**kw)


def load_batch(path: Path) -> RolloutBatch:
    return RolloutBatch(**torch.load(path, weights_only=True))


RM_WORDS = ["great", "awful", "film", "plot", "lovely", "boring", "scene", "music"]


def rm_items():
    """Eleven preference pairs (the chosen response has more positive words), for ``RMConfig(batch_size=5)``:
    global batches of 5, 5 and 1 judgements, so the shards of two ranks are unequal, and one is empty."""
    from tokengym.feedback.rm_training import PairItem

    g = torch.Generator().manual_seed(0)
    words = lambda n: " ".join(RM_WORDS[int(i)] for i in torch.randint(len(RM_WORDS), (n,), generator=g))  # noqa: E731
    return [PairItem(f"review {i} says", "great lovely " + words(3), "awful boring " + words(3)) for i in range(11)]


def rm_config():
    from tokengym.feedback.rm_training import RMConfig

    return RMConfig(batch_size=5, epochs=1.0, lr=1e-2, max_length=16)


@contextlib.contextmanager
def rm_adam_eps(eps: float = 1e-3):
    """``fit`` with AdamW's eps raised from 1e-8: the tiny scorer has many gradients at float-noise
    level (~1e-9), which Adam's first step turns into +-lr updates whose sign depends on summation
    order, so two correct runs could differ by 2*lr there. With eps >> noise the comparison measures
    the gradients, which is what data parallelism must get right."""
    adamw = torch.optim.AdamW
    torch.optim.AdamW = functools.partial(adamw, eps=eps)
    try:
        yield
    finally:
        torch.optim.AdamW = adamw


def tiny_reward_model(seed: int):
    """A 1-layer BERT scorer on the MiniLM tokenizer, dropout off (as ``tests/test_feedback_rm.py``)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tokengym.feedback.rm_training import init_head
    from tokengym.models import default_encoder_dir

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(default_encoder_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    init_head(model)
    return tok, model.eval()


def trainable(agent: PPOAgent) -> dict[str, torch.Tensor]:
    state = {f"policy.{k}": v.detach().clone() for k, v in agent.ac.policy.named_parameters() if v.requires_grad}
    state.update({f"value_head.{k}": v.detach().clone() for k, v in agent.ac.value_head.state_dict().items()})
    return state


def cmd_check(out: Path, B: int) -> None:
    r, w = dist.rank(), dist.world_size()
    tok = make_toy_tokenizer()
    # A different initialisation on every rank: the agent must start every rank from rank 0's weights.
    _, model = make_tiny_causal_lm(tok, hidden=32, n_layers=1, n_heads=2, seed=r)
    local = B // w
    agent = PPOAgent(make_env(tok, local), model, check_config(local))
    start = trainable(agent)
    exp = agent._make_experience(rows(load_batch(out / "batch.pt"), slice(r * local, (r + 1) * local)))
    agent._update(exp)
    after_update = trainable(agent)
    beta0 = agent.kl_ctl.beta
    metrics = agent.step()  # a full iteration: this rank samples its own episodes
    from tokengym.feedback.rm_training import RewardModelTrainer

    rm_tok, rm = tiny_reward_model(seed=r)  # different per rank: fit() must broadcast rank 0's
    with rm_adam_eps():
        rm_losses = RewardModelTrainer(rm_tok, rm, rm_config()).fit(rm_items())
    torch.save({"start": start, "after_update": after_update, "advantages": exp.advantages, "returns": exp.returns,
                "after_step": trainable(agent), "beta0": beta0, "beta": agent.kl_ctl.beta, "metrics": metrics,
                "responses": agent.env.response_texts(), "world_size": w,
                "rm": {k: v.detach().clone() for k, v in rm.state_dict().items()}, "rm_losses": rm_losses},
               out / f"check_rank{r}.pt")


def cmd_train(out: Path, iters: int, resume: bool, hang_after: int | None) -> None:
    r = dist.rank()
    (out / f"pid_rank{r}").write_text(str(os.getpid()))
    tok = make_toy_tokenizer()
    _, model = make_tiny_causal_lm(tok, hidden=32, n_layers=1, n_heads=2, seed=0)
    cfg = PPOConfig(batch_size=4, minibatch_size=2, micro_batch_size=2, ppo_epochs=2, learning_rate=3e-3,
                    sample_every=0, checkpoint_every=1, seed=5, lora_r=0, anneal_lr=True, kl_coef=0.05,
                    kl_target=6.0, kl_horizon=10000)
    agent = PPOAgent(make_env(tok, 4), model, cfg, run_dir=str(out / "run"))
    if resume:
        agent.load_checkpoint(out / "run" / "checkpoint")

    def record(iteration: int, metrics: dict[str, float]) -> None:
        # Every rank's own episodes, so the test can check that a resumed rank replays them exactly.
        row = {"iteration": iteration, "responses": agent.env.response_texts(), "beta": metrics["beta"],
               "resumed": resume}
        with open(out / f"episodes_rank{r}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if hang_after is not None and iteration == hang_after:
            (out / f"hanging_rank{r}").write_text("")
            time.sleep(600)  # the test kills the run here

    agent.learn(iters, callback=record, progress=False)


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["check", "train"])
    p.add_argument("out", type=Path)
    p.add_argument("n", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--hang-after", type=int)
    args = p.parse_args()
    with dist.distributed_from_env():
        if args.mode == "check":
            cmd_check(args.out, args.n)
        else:
            cmd_train(args.out, args.n, args.resume, args.hang_after)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
