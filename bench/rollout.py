"""Rollout throughput: ``model.generate`` vs ``BatchedTextEnv`` + ``CachedSampler`` vs a naive env loop.

Three ways to sample the same work on SmolLM2-135M-Instruct: ``--batch`` (16) prompts of
exactly ``--prompt-tokens`` (16) tokens (the first prompts of ``movie_reviews`` that long, so no row is
padded), ``--new-tokens`` (48) new tokens each, temperature 1, no top-k/top-p:

(a) ``generate``: ``model.generate(do_sample=True, temperature=1, top_k=0, top_p=1)``, KV cache;
(b) ``env + CachedSampler``: ``CachedSampler.rollout`` through ``BatchedTextEnv`` (one forward of the
    new column per env step, KV cache owned by the sampler);
(c) ``naive env loop``: the same env, but every step re-feeds the whole prefix (``P + t`` tokens of
    every row) without a cache, as env loops that treat the LM as a stateless policy do.

EOS is switched off in all three (``generate`` with ``eos_token_id=None``; the env with an EOS id that
no action can take), so each generates exactly batch x new-tokens tokens; tokens/s counts generated
tokens. The env's reward is a trivial ``lambda p, r: 0.0`` so that reward cost does not count; the cost
of the default VADER reward on the same texts is reported separately.

(c) is too slow to run in full on a small CPU: its step cost is linear in the prefix length, so each
round times one real naive step at a few prefix lengths (``--naive-steps``; the env is fast-forwarded
with recorded tokens in between), fits ``time = c0 + c1 * length`` and sums the fit over the T steps.

Variants are interleaved (the order rotates every round) for ``--repeats`` rounds; the table gives
medians, and the ratios are medians of per-round ratios. Time inside the model's forward (hooks on
the model) is reported too, so "overhead" = wall time outside the forward.

Devices and precisions: ``--device`` (``auto``: CUDA when torch sees a GPU) and ``--dtype``
(``fp32,bf16``; by default bf16 only where it has hardware behind it, a GPU that supports it or a CPU
with AMX/AVX512-BF16, and the results say why it was skipped otherwise). Each dtype measures the
three variants in that dtype: bf16 is autocast for all of them (fp32 weights, bf16 matmuls;
``generate`` and the naive loop under ``torch.autocast``, the sampler with ``autocast_dtype``), so
ours and the floor compare like with like. Every result records ``hardware_record(device, dtype)``.
On a GPU the timers wait for the device (``torch.cuda.synchronize``) before reading the clock.

``--model tiny`` runs every code path on a tiny random model in seconds (for checking the script;
its numbers mean nothing).

Run: ``python bench/rollout.py`` (about 5 minutes; writes bench/results/rollout.{json,md}; on a GPU
``rollout_cuda.{json,md}`` unless ``--tag`` is given).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from _util import (
    add_hardware_args,
    command_line, load_policy, long_prompt_indices, machine_info, md_table, median, never_stop, progress,
    resolve_dtypes, set_threads, sync, write_results,
)


class ForwardClock:
    """Wall time spent inside ``model.forward`` (pre/post hooks on the top module; on a GPU each hook
    waits for the device first, so the time is the forward's work, not its launch)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.total, self.calls, self._t0, self.device = 0.0, 0, 0.0, device
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_):
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, *_):
        sync(self.device)
        self.total += time.perf_counter() - self._t0
        self.calls += 1

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-steps", default="0,24,47", help="steps t (prefix length P+t) timed for the naive loop")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see _util.set_threads)")
    add_hardware_args(ap)
    ap.add_argument("--profile", action="store_true", help="also print a torch profile of one (b) rollout")
    args = ap.parse_args()

    from tokengym.hardware import DTYPES, resolve_device

    set_threads(args.threads)
    device = resolve_device(args.device, setting="--device")
    dtypes, skipped = resolve_dtypes(args.dtype, device)
    if skipped:
        progress(skipped)
    tag = args.tag if args.tag is not None else ("" if device.type == "cpu" else f"_{device.type}")
    info = machine_info(device)
    progress(f"loading {args.model} on {device} (torch threads {info['torch_threads']}, load average {info['load_average']})")
    tok, model = load_policy(args.model)
    model.to(device)
    clock = ForwardClock(model, device)
    per_dtype, md_parts = {}, []
    for name in dtypes:
        progress(f"--- dtype {name} ---")
        data, md = measure(args, tok, model, clock, device, name, DTYPES[name])
        per_dtype[name], md_parts = data, md_parts + [md]
    first = per_dtype[dtypes[0]]
    data = {
        "command": command_line(), "device": str(device), "dtypes_measured": dtypes, "dtype_skipped": skipped,
        # The first dtype's numbers stay at the top level, where earlier results had them.
        **first, "dtypes": per_dtype,
    }
    if skipped:
        md_parts.append(f"* {skipped}.")
    js, mdp = write_results("rollout" + tag, data, "\n\n".join(md_parts), args.results_dir)
    print("\n\n".join(md_parts))
    print(f"\nwrote {js} and {mdp}")


def measure(args: argparse.Namespace, tok, model, clock: ForwardClock, device: torch.device, dtype_name: str,
            dtype: torch.dtype) -> tuple[dict, str]:
    """The three variants in ``dtype`` (bf16 = autocast): the result record and its Markdown."""
    from tokengym.agents import CachedSampler
    from tokengym.agents.rollout import autocast_context
    from tokengym.envs import BatchedTextEnv
    from tokengym.rewards import resolve_reward

    autocast_dtype = None if dtype == torch.float32 else dtype
    B, T, P = args.batch, args.new_tokens, args.prompt_tokens
    naive_ts = sorted({min(int(t), T - 1) for t in args.naive_steps.split(",")})
    info = machine_info(device, dtype)
    env = BatchedTextEnv(B, tokenizer=tok, reward=lambda p, r: 0.0, max_new_tokens=T, max_prompt_tokens=P,
                         stop_token_ids=never_stop(tok))
    options = {"prompt_indices": long_prompt_indices(env, B, P)}
    obs, _ = env.reset(options=options)
    prompt_ids = torch.as_tensor(obs["input_ids"][:, :P], device=device)
    prompt_mask = torch.as_tensor(obs["attention_mask"][:, :P], device=device)
    assert int(prompt_mask.sum()) == B * P, "every prompt should fill all P columns"

    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T, eos_token_id=None,
                   pad_token_id=tok.pad_token_id)
    sampler = CachedSampler(model, temperature=1.0, autocast_dtype=autocast_dtype)
    V = env.vocab_size

    def run_generate(seed: int) -> tuple[float, int, float]:
        torch.manual_seed(seed)
        clock.reset()
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast_context(device, autocast_dtype):
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg)
        sync(device)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        new = out[:, P:]
        assert new.shape == (B, T), new.shape
        return dt, int(new.numel()), clock.total, cpu

    last_batch = {}

    def run_env(seed: int) -> tuple[float, int, float]:
        clock.reset()
        gen = torch.Generator().manual_seed(seed)
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        batch = sampler.rollout(env, generator=gen, options=options)
        sync(device)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        last_batch["b"] = batch
        return dt, int(batch.response_mask.sum()), clock.total, cpu

    @torch.inference_mode()
    def naive_step_times(seed: int) -> tuple[dict[int, float], dict[int, float]]:
        """One real naive env step (whole prefix re-fed, sample, env.step) at each t in naive_ts."""
        gen = torch.Generator().manual_seed(seed)
        filler = last_batch["b"].response_ids.cpu().numpy() if "b" in last_batch else np.zeros((B, T), dtype=np.int64)
        obs, _ = env.reset(options=options)
        times, cpus = {}, {}
        for t in range(max(naive_ts) + 1):
            if t in naive_ts:
                sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                ids = torch.as_tensor(obs["input_ids"][:, : P + t], device=device)
                mask = torch.as_tensor(obs["attention_mask"][:, : P + t], device=device)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                with autocast_context(device, autocast_dtype):
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1).logits
                logp = torch.log_softmax(logits[:, -1, :V].float(), -1)
                # Drawn on the CPU with a CPU generator, as the sampler does.
                action = torch.multinomial(logp.exp().cpu(), 1, generator=gen).squeeze(1)
                obs, *_ = env.step(action.numpy())
                times[t], cpus[t] = time.perf_counter() - t0, time.process_time() - c0
            else:  # fast-forward with recorded tokens: only the prefix length matters for the cost
                obs, *_ = env.step(filler[:, t])
        return times, cpus

    progress("warm-up (one short generate, one short rollout)")
    with autocast_context(device, autocast_dtype):
        model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg, max_new_tokens=2)
    run_env(0)  # also gives recorded tokens for the naive loop's fast-forward
    vader = resolve_reward("vader")

    rows: dict[str, list] = {"a": [], "b": [], "c": []}
    ratios_ba, ratios_ac, cpu_ba, cpu_ac = [], [], [], []
    variants = ["a", "b", "c"]
    for r in range(args.repeats):
        order = variants[r % 3 :] + variants[: r % 3]
        this = {}
        for v in order:
            seed = 100 + r
            if v == "a":
                dt, n, fwd, cpu = run_generate(seed)
                this["a"] = {"s": dt, "tokens": n, "fwd_s": fwd, "cpu_s": cpu}
            elif v == "b":
                dt, n, fwd, cpu = run_env(seed)
                this["b"] = {"s": dt, "tokens": n, "fwd_s": fwd, "cpu_s": cpu}
            else:
                st, sc = naive_step_times(seed)

                def extrapolate(times: dict[int, float]) -> tuple[float, list[float]]:
                    L = np.array([P + t for t in times], dtype=float)
                    y = np.array(list(times.values()))
                    c1, c0 = np.polyfit(L, y, 1) if len(times) > 1 else (0.0, float(y[0]))
                    return float(sum(c0 + c1 * (P + t) for t in range(T))), [float(c0), float(c1)]

                est, fit = extrapolate(st)
                est_cpu, _ = extrapolate(sc)
                this["c"] = {"s": est, "cpu_s": est_cpu, "tokens": B * T, "step_s": {int(k): v for k, v in st.items()},
                             "step_cpu_s": {int(k): v for k, v in sc.items()}, "fit": fit}
            progress(f"[{dtype_name}] round {r + 1}/{args.repeats} {v}: {this[v]['s']:.1f} s{' (extrapolated)' if v == 'c' else ''}")
        for v in variants:
            rows[v].append(this[v])
        ratios_ba.append((this["b"]["tokens"] / this["b"]["s"]) / (this["a"]["tokens"] / this["a"]["s"]))
        ratios_ac.append((this["a"]["tokens"] / this["a"]["s"]) / (this["c"]["tokens"] / this["c"]["s"]))
        cpu_ba.append((this["b"]["tokens"] / this["b"]["cpu_s"]) / (this["a"]["tokens"] / this["a"]["cpu_s"]))
        cpu_ac.append((this["a"]["tokens"] / this["a"]["cpu_s"]) / (this["c"]["tokens"] / this["c"]["cpu_s"]))

    # VADER on the texts of the last env rollout (scored once per episode end in a real run).
    b = last_batch["b"]
    vader(b.prompt_texts, b.response_texts)
    vader_s = []
    for _ in range(5):
        t0 = time.perf_counter()
        vader(b.prompt_texts, b.response_texts)
        vader_s.append(time.perf_counter() - t0)

    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            run_env(999)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    names = {"a": "(a) model.generate, KV cache", "b": "(b) BatchedTextEnv + CachedSampler",
             "c": "(c) naive env loop, prefix re-fed (extrapolated)"}
    summary = {}
    table = []
    for v in variants:
        s = median([x["s"] for x in rows[v]])
        cpu = median([x["cpu_s"] for x in rows[v]])
        n = rows[v][0]["tokens"]
        fwd = median([x["fwd_s"] for x in rows[v]]) if v != "c" else float("nan")
        summary[v] = {"name": names[v], "median_s": s, "median_cpu_s": cpu, "tokens": n, "tokens_per_s": n / s,
                      "tokens_per_cpu_s": n / cpu, "forward_s": fwd, "overhead_s": s - fwd, "rounds": rows[v]}
        table.append([names[v], n, s, n / s, cpu, n / cpu, fwd, (s - fwd) if v != "c" else float("nan"),
                      1000 * (s - fwd) / T if v != "c" else float("nan")])
    ba, ac, cba, cac = median(ratios_ba), median(ratios_ac), median(cpu_ba), median(cpu_ac)
    end_info = machine_info(device, dtype)
    data = {
        "command": command_line(), "settings": {"batch": B, "new_tokens": T, "prompt_tokens": P, "repeats": args.repeats,
                                                "naive_steps": naive_ts, "dtype": dtype_name, "device": str(device),
                                                "model": args.model, "temperature": 1.0, "threads": args.threads},
        "hardware": info, "machine_start": info, "machine_end": end_info, "variants": summary,
        "ratio_b_over_a": ba, "ratio_a_over_c": ac, "ratios_b_over_a_rounds": ratios_ba, "ratios_a_over_c_rounds": ratios_ac,
        "cpu_ratio_b_over_a": cba, "cpu_ratio_a_over_c": cac, "cpu_ratios_b_over_a_rounds": cpu_ba,
        "cpu_ratios_a_over_c_rounds": cpu_ac,
        "goal_b_over_a": 0.9, "goal_met": ba >= 0.9 and cba >= 0.9,
        "vader_s_median": median(vader_s), "vader_share_of_b": median(vader_s) / summary["b"]["median_s"],
    }
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    where = f"{device}" + (f", {info['gpu']}" if device.type == "cuda" and "gpu" in info else "")
    precision = dtype_name + (" autocast (fp32 weights)" if autocast_dtype is not None else "")
    md = [
        f"### Rollout throughput ({args.model} {precision} on {where}, batch {B}, {P}-token prompts, {T} new tokens, EOS off)",
        "",
        md_table(["variant", "tokens", "median wall s", "tokens/s (wall)", "median CPU s", "tokens/CPU-s",
                  "wall s in forward", "wall s outside forward", "outside forward ms/step"], table),
        "",
        f"* **(b)/(a) = {ba:.2f}** by wall time, **{cba:.2f}** by CPU time (goal >= 0.9: "
        f"{'met' if data['goal_met'] else 'NOT met'}); per round (wall): {fmt(ratios_ba)}; (CPU): {fmt(cpu_ba)}",
        f"* **(a)/(c) = {ac:.1f}x** by wall time, **{cac:.1f}x** by CPU time; per round (wall): {fmt(ratios_ac)}. "
        f"(c) is extrapolated from one real naive step at t = {naive_ts} per round "
        "(fit time = c0 + c1 x prefix length, summed over the T steps); measured step wall times (s): "
        + "; ".join(", ".join(f"t={k}: {v:.2f}" for k, v in x["step_s"].items()) for x in rows["c"]),
        f"* VADER reward on the {B} finished texts: {1000 * median(vader_s):.1f} ms "
        f"({100 * data['vader_share_of_b']:.2f} % of a (b) rollout); not counted above (the env's reward was `lambda p, r: 0.0`).",
        f"* {args.repeats} interleaved rounds (order rotated), medians; {info['cpus']} CPUs, torch {info['torch']} with "
        f"{info['torch_threads']} thread(s); load average {info['load_average'][0]:.1f} at start, "
        f"{end_info['load_average'][0]:.1f} at end. Wall times move with any other load on the machine; "
        + ("CPU time (one torch thread, so CPU time = work done) is the steadier measure." if info["torch_threads"] == 1 and device.type == "cpu" else
         "CPU time counts every thread (and, on a GPU, only the host's share); wall time is the measure here."),
        f"* Command: `{data['command']}` ({end_info['date']})",
    ]
    return data, "\n".join(md)


if __name__ == "__main__":
    main()
