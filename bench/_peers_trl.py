"""TRL side of ``bench/peers.py``: runs in the separate venv ``bench/.venv-trl`` (TRL, transformers,
torch; no tokengym), offline. One algorithm per process; writes a JSON of per-iteration times.

    bench/.venv-trl/bin/python bench/_peers_trl.py --algo rloo --model DIR --prompts prompts.json --out out.json

``--algo``: ``rloo`` (RLOOTrainer) and ``grpo`` (GRPOTrainer): one optimiser step per generation of
``batch`` completions (micro-batches of ``micro``, gradient accumulation), ``num_iterations=1``;
``grpo-ppo``: GRPOTrainer shaped like our PPO iteration: ``num_iterations=epochs`` passes over each
generation in minibatches of ``micro`` (one optimiser step each): ``epochs x batch/micro`` steps per
generation, and TRL computes old log-probs with an extra forward, as PPO does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=["rloo", "grpo", "grpo-ppo"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: the Trainer's bf16=True (CPU autocast)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import trl
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:  # as tokengym: pad distinct from EOS
        tok.pad_token = tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    prompts = json.load(open(args.prompts))
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])

    def reward_len(completions, **kwargs):  # the same trivial reward as our side: characters / 100
        return [len(c) / 100.0 for c in completions]

    common = dict(
        output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=args.dtype == "bf16", fp16=False, gradient_checkpointing=False,
        learning_rate=1e-5, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
        seed=0, dataloader_num_workers=0, num_generations=args.group, max_completion_length=args.new_tokens,
        temperature=1.0, top_k=0, top_p=1.0, beta=args.beta, disable_dropout=True,
        generation_kwargs={"eos_token_id": None},  # EOS off, as on our side: every completion has new_tokens tokens
    )
    if args.algo == "grpo-ppo":
        shape = dict(per_device_train_batch_size=args.micro, gradient_accumulation_steps=1,
                     steps_per_generation=args.batch // args.micro, num_iterations=args.epochs)
        steps_per_iter = args.epochs * args.batch // args.micro
    else:
        shape = dict(per_device_train_batch_size=args.micro, gradient_accumulation_steps=args.batch // args.micro,
                     num_iterations=1)
        steps_per_iter = 1
    if args.algo == "rloo":
        config = trl.RLOOConfig(**common, **shape, max_steps=args.iterations * steps_per_iter)
        Trainer = trl.RLOOTrainer
    else:
        config = trl.GRPOConfig(**common, **shape, max_steps=args.iterations * steps_per_iter)
        Trainer = trl.GRPOTrainer

    begins, ends = [], []  # (wall, CPU) at each optimiser step's start and end

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            begins.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, a, state, control, **kw):
            ends.append((time.perf_counter(), time.process_time()))

    trainer = Trainer(model=model, reward_funcs=reward_len, args=config, train_dataset=dataset, processing_class=tok,
                      callbacks=[Clock()])
    setup_s = time.perf_counter() - t_setup

    phase: dict[str, float] = {}

    def wrap(name: str, key: str) -> None:
        fn = getattr(trainer, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phase[key] = phase.get(key, 0.0) + time.perf_counter() - t0

        setattr(trainer, name, timed)

    wrap("_generate_single_turn", "generation")
    wrap("_calculate_rewards", "scoring")
    wrap("_generate_and_score_completions", "generate_and_score")
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    iters, iters_cpu = [], []
    for i in range(args.iterations):
        a, b = i * steps_per_iter, (i + 1) * steps_per_iter - 1
        iters.append(ends[b][0] - begins[a][0])
        iters_cpu.append(ends[b][1] - begins[a][1])
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    out = {
        "algo": args.algo, "framework": f"TRL {trl.__version__} (transformers {transformers.__version__}, torch {torch.__version__})",
        "iteration_s": iters, "iteration_cpu_s": iters_cpu, "steps_per_iteration": steps_per_iter, "setup_s": setup_s, "train_s": train_s,
        "generated_tokens_per_iteration": args.batch * args.new_tokens,
        "mean_completion_length_after_eos_mask": sum(lengths) / len(lengths) if lengths else None,
        "phases_total_s": {"generation": phase.get("generation", 0.0), "scoring": phase.get("scoring", 0.0),
                           "logprobs_old_ref": phase.get("generate_and_score", 0.0) - phase.get("generation", 0.0) - phase.get("scoring", 0.0),
                           "update": sum(iters) - phase.get("generate_and_score", 0.0)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": {k: v for k, v in {**common, **shape}.items() if k != "output_dir"},
        "log_history": trainer.state.log_history,
    }
    json.dump(out, open(args.out, "w"), default=str)


if __name__ == "__main__":
    main()
