"""One PPO iteration on SmolLM2, phase by phase, against the floors measured in the same run.

Workload: ``--batch`` (16) prompts of exactly ``--prompt-tokens`` (16) tokens, ``--new-tokens`` (48) new
tokens each (EOS off, so every episode has 48 tokens), ``--epochs`` (4) PPO epochs of minibatch
``--minibatch`` (8); the reward is a ``learned`` MiniLM reward model (a fresh one from
``tokengym.rewards.learned.new_reward_model()``, saved to a temporary folder). Configurations: full
fine-tuning (frozen deep-copied reference) and LoRA (``lora_r=16``; the reference is the base with the
adapters disabled).

Each configuration runs in its own subprocess (so its peak resident memory is its own), which
alternates for ``--repeats`` rounds:

* **ours**: ``PPOAgent.step()``, timed from outside by wrapping ``agent.sampler.rollout`` (generation),
  the env's reward (scoring; inside the rollout, subtracted from generation), ``agent.ac.evaluate``
  (old log-probs and values), ``agent.ac.reference_logprobs`` and ``agent.update``;
* **direct floor**: the same work called directly on the model: ``generate`` (KV cache, EOS off), the
  reward model's forward on the texts, one policy forward (response logits + hidden states) and one
  reference forward over the batch, and ``epochs x batch/minibatch`` forward+backward passes (response
  log-probs + value head) each followed by an Adam step;
* **FLOP floor** (computed): the FLOPs of those passes (2 N per token forward, 6 N forward+backward for
  full fine-tuning, 4 N for LoRA (no weight gradients of the frozen base), the LM head only where
  logits are needed, attention 4 d L ctx per token) divided by the fp32 matmul peak measured in the same
  process (2048x2048 matmuls). Decode steps cannot run at matmul peak (a batch-16 step reads every
  weight to do 32 FLOPs per weight), so a **roofline floor** also charges each decode step the
  time to read the weights once at the measured memory bandwidth.

Peak memory is the subprocess's ``ru_maxrss`` right after its first "ours" iteration (before the floor
ran in it). Targets: iteration <= 1.5x FLOP floor; peak memory <= 3 GB (LoRA), <= 6 GB (full).

Devices and precisions: ``--device`` (``auto``: CUDA when torch sees a GPU) and ``--dtype``
(``fp32,bf16``; by default bf16 only where it has hardware behind it, a GPU that supports it or a CPU
with AMX/AVX512-BF16, and the results say why it was skipped otherwise). Each configuration runs once
per dtype, ours and the floors in that dtype: bf16 is autocast (fp32 weights and Adam, bf16 matmuls)
for the agent (``PPOConfig.dtype``) and for the direct floor's passes alike, and the FLOP floor uses
the matmul peak measured in that dtype on that device. Under bf16 the agent recomputes the old
log-probs and values (the sampler's cached bf16 steps differ from the training forward), so the floor
then includes that forward too. The reward model runs on the CPU, inside the env, in both. Every
result records ``hardware_record(device, dtype)``; on a GPU the timers wait for the device.

``--model tiny`` runs every code path on a tiny random model (for checking the script; its numbers
mean nothing).

Run: ``python bench/ppo_iteration.py`` (both configs, ~10-15 min on a loaded 2-core machine) or
``--configs lora``; results of configs not re-run are kept in bench/results/ppo_iteration.json
(``ppo_iteration_cuda.json`` on a GPU unless ``--tag`` is given).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import (
    add_hardware_args,
    RESULTS, Timer, command_line, load_policy, long_prompt_indices, machine_info, matmul_peak_gflops, md_table, median,
    memory_bandwidth_gbs, never_stop, peak_rss_mb, progress, resolve_dtypes, set_threads, write_results,
)

PHASES = ["generation", "scoring", "old_logprobs_values", "reference_logprobs", "update", "other"]
PHASE_NAMES = {
    "generation": "generation", "scoring": "scoring (reward model)", "old_logprobs_values": "old log-probs + values (fwd)",
    "reference_logprobs": "reference log-probs (fwd)", "update": "update (fwd+bwd+Adam)", "other": "other (advantages, metrics)",
}


# ----------------------------------------------------------------------------------------------
# FLOP model
# ----------------------------------------------------------------------------------------------
def flop_model(model, B: int, P: int, T: int, epochs: int, lora: bool, rm_tokens: int, rm_body: int,
               recompute_old: bool = False) -> dict[str, float]:
    cfg = model.config
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    n_total = sum(p.numel() for p in model.get_base_model().parameters()) if hasattr(model, "get_base_model") \
        else sum(p.numel() for p in model.parameters())
    n_emb = model.get_input_embeddings().weight.numel()  # tied: the LM head is the same matrix
    n_body = n_total - n_emb

    def attn(ctx_from: int, ctx_to: int) -> float:  # positions ctx_from..ctx_to-1 attending causally
        return sum(4 * d * L * (i + 1) for i in range(ctx_from, ctx_to))

    def fwd(rows: int, S: int, K: int) -> float:  # rows x S tokens, LM head on K positions
        return rows * (2 * n_body * S + 2 * n_emb * K + attn(0, S))

    gen = B * (2 * n_body * P + 2 * n_emb + attn(0, P))  # prefill
    gen += sum(B * (2 * (n_body + n_emb) + 4 * d * L * (P + t + 1)) for t in range(T - 1))  # decode steps
    one_fwd = fwd(B, P + T, T)
    return {
        "generation": gen,
        "scoring": 2 * rm_body * rm_tokens,
        # The old log-probs and values come out of the generation's own forwards unless recomputed.
        "old_logprobs_values": one_fwd if recompute_old else 0.0,
        "reference_logprobs": one_fwd,
        "update": epochs * one_fwd * (2 if lora else 3),
        "other": 0.0,
        "_decode_steps": T - 1,
        "_weight_bytes": 4 * n_total,
        "_n_params": n_total,
    }


# ----------------------------------------------------------------------------------------------
# Child: one configuration
# ----------------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    import numpy as np
    import torch

    from tokengym.agents import PPOAgent, PPOConfig
    from tokengym.agents.rollout import autocast_context
    from tokengym.envs import BatchedTextEnv
    from tokengym.hardware import DTYPES, resolve_device
    from tokengym.rewards import RewardFunction, resolve_reward

    B, T, P, lora = args.batch, args.new_tokens, args.prompt_tokens, args.child == "lora"
    device, dtype = resolve_device(args.device, setting="--device"), DTYPES[args.dtype]
    tok, model = load_policy(args.model)
    timer = Timer(device)
    learned_checked = resolve_reward(args.rm)  # the reward model the env pays, validated
    learned = learned_checked.inner  # the LearnedReward itself, for the floor's direct forward

    class TimedReward(RewardFunction):
        """The env's reward, timed: a RewardFunction like any other, so no env internals are touched."""

        name = "timed_rm"

        def __call__(self, prompts, responses, **kw):
            with timer.section("scoring"):
                return learned_checked(prompts, responses, **kw)

    env = BatchedTextEnv(B, tokenizer=tok, reward=TimedReward(), max_new_tokens=T, max_prompt_tokens=P,
                         stop_token_ids=never_stop(tok))
    long_idx = np.asarray(long_prompt_indices(env, 4 * B, P, at_least=B))
    cfg = PPOConfig(batch_size=B, minibatch_size=args.minibatch, micro_batch_size=args.minibatch, ppo_epochs=args.epochs,
                    lora_r=16 if lora else 0, sample_every=0, adaptive_kl=False, kl_stop=None,  # every timed iteration updates
                    # LoRA's default rate would blow full fine-tuning up (the ratio guard stops the run)
                    learning_rate=3e-4 if lora else 1e-5,
                    recompute_old_logprobs=bool(args.recompute_old), device=str(device), dtype=args.dtype)
    agent = PPOAgent(env, model, cfg)  # moves the model to the device
    autocast_dtype = agent.autocast_dtype
    # Under autocast the agent recomputes the old log-probs and values; the floor does the same work.
    recompute_old = bool(args.recompute_old) or autocast_dtype is not None
    agent.total_iterations = 1000  # keep the learning rate away from 0 (annealing)
    agent.prompt_sampler = lambda n, progress, rng: rng.choice(long_idx, size=n, replace=False)
    policy, value_head = agent.ac.policy, agent.ac.value_head

    timer.wrap(agent.sampler, "rollout", "rollout")
    timer.wrap(agent.ac, "evaluate", "old_logprobs_values")
    timer.wrap(agent.ac, "reference_logprobs", "reference_logprobs")
    timer.wrap(agent, "update", "update")
    def ours() -> dict[str, dict[str, float]]:
        timer.reset()
        with timer.section("total"):
            agent.step()
        out = {}
        for kind, tt in (("wall", timer.totals), ("cpu", timer.cpu)):
            ph = {"generation": tt["rollout"] - tt.get("scoring", 0.0), "scoring": tt.get("scoring", 0.0),
                  "old_logprobs_values": tt.get("old_logprobs_values", 0.0), "reference_logprobs": tt["reference_logprobs"],
                  "update": tt["update"]}
            ph["other"] = tt["total"] - sum(ph.values())
            ph["total"] = tt["total"]
            out[kind] = ph
        return out

    gen_cfg = copy.deepcopy(policy.generation_config if not lora else policy.get_base_model().generation_config)
    gen_cfg.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T, eos_token_id=None,
                   pad_token_id=tok.pad_token_id)
    keep = torch.arange(P - 1, P + T - 1, device=device)
    rm_tokens = [0]

    def floor(seed: int) -> dict[str, dict[str, float]]:
        ft = Timer(device)
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(options={"prompt_indices": rng.choice(long_idx, size=B, replace=False)})
        prompt = torch.as_tensor(obs["input_ids"][:, :P], device=device)
        pmask = torch.ones_like(prompt)
        torch.manual_seed(seed)
        with ft.section("generation"), torch.no_grad(), autocast_context(device, autocast_dtype):
            if recompute_old:
                ids = policy.generate(input_ids=prompt, attention_mask=pmask, generation_config=gen_cfg)
            else:  # old log-probs and values from generate's own steps, as the agent's sampler does
                g = policy.generate(input_ids=prompt, attention_mask=pmask, generation_config=gen_cfg, output_logits=True,
                                    output_hidden_states=True, return_dict_in_generate=True)
                ids = g.sequences
                logits = torch.stack(g.logits, 1).float()
                torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None])
                value_head(torch.stack([h[-1][:, -1] for h in g.hidden_states], 1))
                del g, logits
        texts = tok.batch_decode(ids[:, P:].cpu(), skip_special_tokens=True)
        prompts = tok.batch_decode(prompt.cpu(), skip_special_tokens=True)
        with ft.section("scoring"), torch.inference_mode():  # on the CPU, where the env runs it for ours
            enc = learned.tokenizer(prompts, texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            learned.model(**enc)
        rm_tokens[0] = int(enc["attention_mask"].sum())
        mask = torch.ones_like(ids)
        resp = ids[:, P:]

        def forward(m, rows):
            with autocast_context(device, autocast_dtype):
                out = m(input_ids=ids[rows], attention_mask=mask[rows], logits_to_keep=keep, output_hidden_states=True,
                        use_cache=False)
            logp = torch.log_softmax(out.logits.float(), -1).gather(-1, resp[rows, :, None]).squeeze(-1)
            return logp, value_head(out.hidden_states[-1][:, P - 1 : P + T - 1])

        all_rows = torch.arange(B, device=device)
        ft.totals["old_logprobs_values"] = ft.cpu["old_logprobs_values"] = 0.0
        if recompute_old:
            with ft.section("old_logprobs_values"), torch.inference_mode():
                forward(policy, all_rows)
        with ft.section("reference_logprobs"), torch.inference_mode(), agent.ac.reference_context():
            forward(agent.ac.reference if agent.ac.reference is not None else policy, all_rows)
        with ft.section("update"):
            for _ in range(args.epochs):
                for s in range(0, B, args.minibatch):
                    agent.optimizer.zero_grad(set_to_none=True)
                    logp, values = forward(policy, all_rows[s : s + args.minibatch])
                    (-(logp.mean()) + values.pow(2).mean()).backward()
                    agent.optimizer.step()
            agent.optimizer.zero_grad(set_to_none=True)
        out = {}
        for kind, tt in (("wall", ft.totals), ("cpu", ft.cpu)):
            ph = dict(tt)
            ph["other"] = 0.0
            ph["total"] = sum(ph.values())
            out[kind] = ph
        return out

    from tokengym.hardware import cpu_has_bf16_units

    # Emulated bf16 (a CPU without AMX/AVX512-BF16 units) takes about a minute per 2048^3 matmul; a
    # 512^3 one measures the same slow peak in a second.
    peak_n = 512 if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16_units() else 2048
    peak = matmul_peak_gflops(n=peak_n, dtype=dtype, device=device)
    bw = memory_bandwidth_gbs(device=device)
    rounds = []
    rss_after_ours = None
    for r in range(args.repeats):
        progress(f"[{args.child}] round {r + 1}/{args.repeats}: ours")
        o = ours()
        if rss_after_ours is None:
            rss_after_ours = peak_rss_mb()
        progress(f"[{args.child}] round {r + 1}/{args.repeats}: ours {o['wall']['total']:.1f} s; direct floor")
        f = floor(1000 + r)
        progress(f"[{args.child}] round {r + 1}/{args.repeats}: direct floor {f['wall']['total']:.1f} s")
        rounds.append({"ours": o, "floor": f})
        peak = max(peak, matmul_peak_gflops(n=peak_n, repeats=3, dtype=dtype, device=device))
        bw = max(bw, memory_bandwidth_gbs(repeats=3, device=device))

    rm_body = sum(p.numel() for p in learned.model.parameters()) - learned.model.get_input_embeddings().weight.numel()
    flops = flop_model(policy, B, P, T, args.epochs, lora, rm_tokens[0], rm_body, recompute_old)
    out = {
        "config": args.child, "dtype": args.dtype, "device": str(device), "rounds": rounds, "matmul_peak_gflops": peak, "matmul_n": peak_n, "memory_bandwidth_gbs": bw, "flops": flops,
        "peak_rss_mb_ours": rss_after_ours, "peak_rss_mb_process": peak_rss_mb(),
        "trainable_parameters": sum(p.numel() for p in agent.ac.trainable_parameters()),
        "tokens_per_iteration": B * T, "machine": machine_info(device, dtype), "hardware": machine_info(device, dtype),
        "gpu_peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    Path(args.out).write_text(json.dumps(out, default=float))


# ----------------------------------------------------------------------------------------------
# Parent: run the children, write the tables
# ----------------------------------------------------------------------------------------------
def summarise(res: dict, peak_gflops: float, bw_gbs: float) -> dict:
    """Medians of the rounds, and the floors at the best matmul peak / bandwidth measured anywhere in the run
    (each process measures its own; the best is the closest to the machine's real ceiling)."""
    peak, bw, fl = peak_gflops * 1e9, bw_gbs * 1e9, res["flops"]
    out: dict = {}
    flop_s = {p: fl[p] / peak for p in PHASES}
    flop_s["total"] = sum(flop_s.values())
    roof = dict(flop_s)
    roof["generation"] = max(flop_s["generation"], fl["_decode_steps"] * fl["_weight_bytes"] / bw)
    roof["total"] = sum(roof[p] for p in PHASES)
    out["flop_floor"], out["roofline_floor"] = flop_s, roof
    for kind in ("wall", "cpu"):
        ours = {p: median([r["ours"][kind][p] for r in res["rounds"]]) for p in PHASES + ["total"]}
        floor = {p: median([r["floor"][kind][p] for r in res["rounds"]]) for p in PHASES + ["total"]}
        ratio_rounds = [r["ours"][kind]["total"] / r["floor"][kind]["total"] for r in res["rounds"]]
        out[kind] = {"ours": ours, "direct_floor": floor, "ours_over_direct_floor": median(ratio_rounds),
                     "ours_over_direct_floor_rounds": ratio_rounds,
                     "ours_over_flop_floor": ours["total"] / flop_s["total"],
                     "ours_over_roofline_floor": ours["total"] / roof["total"],
                     "direct_floor_over_flop_floor": floor["total"] / flop_s["total"]}
    return out


def markdown(results: dict, settings: dict, command: str, peaks: dict[str, float], bw: float,
             skipped: str | None = None) -> str:
    dtypes = sorted({res.get("dtype", "fp32") for res in results.values()}, key=["fp32", "bf16"].index)
    lines = [f"### One PPO iteration ({settings.get('model', 'smollm2')} {' and '.join(dtypes)} on "
             f"{settings.get('device', 'cpu')}, batch {settings['batch']}, {settings['prompt_tokens']}-token prompts, "
             f"{settings['new_tokens']} new tokens, {settings['epochs']} epochs x minibatch {settings['minibatch']}, "
             "learned MiniLM reward)", ""]
    if "bf16" in dtypes:
        lines += ["bf16 = autocast: fp32 weights and Adam, bf16 matmuls, fp32 log-probs; ours recomputes the old "
                  "log-probs and values under it, and the direct floor runs that forward too.", ""]
    mem_rows = []
    for name, res in results.items():
        sm = res["summary"]
        w, c, ff, rf = sm["wall"], sm["cpu"], sm["flop_floor"], sm["roofline_floor"]
        rows = [[PHASE_NAMES[p], w["ours"][p], w["direct_floor"][p], c["ours"][p], c["direct_floor"][p], ff[p], rf[p],
                 c["ours"][p] / c["direct_floor"][p] if c["direct_floor"][p] > 0 else float("nan")] for p in PHASES]
        rows.append(["**total**", w["ours"]["total"], w["direct_floor"]["total"], c["ours"]["total"], c["direct_floor"]["total"],
                     ff["total"], rf["total"], c["ours_over_direct_floor"]])
        lines += [f"**{name}** ({res['trainable_parameters'] / 1e6:.2f} M trainable parameters; "
                  f"{len(res['rounds'])} round(s), medians; this process measured a matmul peak of "
                  f"{res['matmul_peak_gflops']:.1f} GFLOP/s)", "",
                  md_table(["phase", "ours wall s", "direct floor wall s", "ours CPU s", "direct floor CPU s", "FLOP floor s",
                            "roofline floor s", "ours / direct (CPU)"], rows), "",
                  f"* ours / direct floor = **{c['ours_over_direct_floor']:.2f}** by CPU time, {w['ours_over_direct_floor']:.2f} by wall "
                  "time (per round, CPU: " + ", ".join(f"{x:.2f}" for x in c["ours_over_direct_floor_rounds"]) + ")",
                  f"* ours / FLOP floor = **{c['ours_over_flop_floor']:.2f}** by CPU time, {w['ours_over_flop_floor']:.2f} by wall "
                  f"time (target <= 1.5: {'met' if min(c['ours_over_flop_floor'], w['ours_over_flop_floor']) <= 1.5 else 'NOT met'}); "
                  f"ours / roofline floor = {c['ours_over_roofline_floor']:.2f} (CPU); the direct floor itself is "
                  f"{c['direct_floor_over_flop_floor']:.2f}x the FLOP floor (CPU)",
                  f"* generation runs at {100 * ff['generation'] / c['ours']['generation']:.0f} % of the matmul peak "
                  f"(batch-{settings['batch']} decode steps are skinny matmuls), the update at "
                  f"{100 * ff['update'] / c['ours']['update']:.0f} % (direct floor: {100 * ff['update'] / c['direct_floor']['update']:.0f} %)",
                  f"* {res['tokens_per_iteration'] / w['ours']['total']:.1f} generated tokens/s over the whole iteration (wall), "
                  f"{res['tokens_per_iteration'] / c['ours']['total']:.1f} per CPU-second", ""]
        limit = 3000 if res.get("config", name) == "lora" else 6000
        mem_rows.append([name, res["peak_rss_mb_ours"], limit, "met" if res["peak_rss_mb_ours"] <= limit else "NOT met",
                         res["peak_rss_mb_process"]])
    lines += ["Peak resident memory (MB) of each configuration's process after its first PPO iteration:", "",
              md_table(["config", "peak RSS MB (ours)", "target MB", "", "peak RSS MB incl. direct floor"], mem_rows), "",
              "Direct floor = the same passes called on the model without the agent; FLOP floor = the iteration's FLOPs at the "
              "best matmul peak measured in the run in the same dtype ("
              + ", ".join(f"{dt}: {pk:.1f} GFLOP/s" for dt, pk in peaks.items())
              + f"; {max(r.get('matmul_n', 2048) for r in results.values())}^2 matmuls, {settings['threads']} thread(s)); roofline floor = the same, except each decode step costs at least one read of the weights "
              f"at the best measured read bandwidth ({bw:.1f} GB/s). CPU time = the process's CPU seconds (with one torch thread CPU time = work done, "
              "and other jobs on the machine inflate it much less than wall time). "
              f"Load average at the start: {results[next(iter(results))]['machine']['load_average'][0]:.1f} (2 cores); "
              "ours and the direct floor alternate in one process, so their ratio is the robust number. Old log-probs and values "
              "come out of the generation's own forwards (ours: the sampler's cached steps; direct floor: `generate`'s per-step "
              "logits and hidden states), so neither runs a separate old forward in fp32 (`--recompute-old 1` measures that "
              "variant; under bf16 both always run it).",
              *([f"{skipped}."] if skipped else []),
              f"Command: `{command}` ({max(r['machine']['date'] for r in results.values())})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="full,lora", help="comma-separated; 'none' only rewrites the tables from the JSON")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    add_hardware_args(ap)
    ap.add_argument("--recompute-old", type=int, default=0, help="1: PPOConfig.recompute_old_logprobs (a separate old forward)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rm", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from tokengym.hardware import resolve_device

    device = resolve_device(args.device, setting="--device")
    dtypes, skipped = resolve_dtypes(args.dtype, device)
    if skipped:
        progress(skipped)
    tag = args.tag if args.tag is not None else ("" if device.type == "cpu" else f"_{device.type}")
    settings = {k: getattr(args, k) for k in ("batch", "new_tokens", "prompt_tokens", "epochs", "minibatch", "repeats", "threads",
                                              "recompute_old", "model")}
    settings["device"] = str(device)
    js = Path(args.results_dir or RESULTS) / f"ppo_iteration{tag}.json"
    old = json.loads(js.read_text()) if js.is_file() else {}
    results = {k: v for k, v in old.get("configs", {}).items()  # configs of an earlier run with the same settings
               if old.get("settings") == settings and "wall" in v["rounds"][0]["ours"]}
    ran = [c for c in args.configs.split(",") if c and c != "none"]
    with tempfile.TemporaryDirectory() as tmp:
        set_threads(args.threads)
        rm_dir = Path(tmp) / "rm"
        if ran:
            from tokengym.rewards.learned import new_reward_model, save_reward_model

            rtok, rmodel = new_reward_model(seed=0)
            save_reward_model(rm_dir, rtok, rmodel, base_model="all-MiniLM-L6-v2")
            del rtok, rmodel
        for name in ran:
            for dt in dtypes:
                key = f"{name}/{dt}"  # one result per configuration and dtype
                out = Path(tmp) / f"{name}_{dt}.json"
                cmd = [sys.executable, __file__, "--child", name, "--rm", str(rm_dir), "--out", str(out), f"--dtype={dt}"]
                cmd += [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
                progress(f"config {key}: subprocess")
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True)
                res = json.loads(out.read_text())
                res["wall_s"] = time.perf_counter() - t0
                results[key] = res
    order = [f"{c}/{dt}" for c in ("full", "lora") for dt in ("fp32", "bf16")]
    results = {k: results[k] for k in order if k in results}
    # Each dtype's floors use the best matmul peak measured in that dtype (bf16 peaks are another ceiling).
    peaks = {}
    for res in results.values():
        dt = res.get("dtype", "fp32")
        peaks[dt] = max(peaks.get(dt, 0.0), res["matmul_peak_gflops"])
    bw = max(r["memory_bandwidth_gbs"] for r in results.values())
    for res in results.values():
        res["summary"] = summarise(res, peaks[res.get("dtype", "fp32")], bw)
    data = {"command": command_line() if ran else old.get("command", command_line()), "settings": settings,
            "dtype_skipped": skipped, "matmul_peak_gflops": peaks, "memory_bandwidth_gbs": bw, "configs": results}
    md = markdown(results, settings, data["command"], peaks, bw, skipped)
    write_results("ppo_iteration" + tag, data, md, args.results_dir)
    print(md)


if __name__ == "__main__":
    main()
