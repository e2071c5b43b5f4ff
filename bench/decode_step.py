"""Anatomy of one SmolLM2 decode step (batch 16): where the time goes, and the alternatives tried.

Generation is the least efficient phase of an RLHF iteration on this CPU (~35 % of the fp32 matmul
peak). This script measures, in one process and one thread:

* the median wall time of a KV-cached decode step through ``transformers`` (what ``generate`` and
  our sampler both run), and the share of it spent in ``aten::mm`` (``torch.profiler``);
* the same step's matmuls timed in isolation at the step's shapes (M = batch rows), with the weights
  hot in cache: the step's matmul floor for this BLAS at this M;
* alternatives for the matmuls: MKL pre-packed weights (``torch.ops.mkl._mkl_linear``) and oneDNN
  (``mkldnn_linear``); for the cache: ``transformers.StaticCache`` instead of the dynamic cache;
* larger batches (M = 32, 64): how the per-row cost falls when more rows share each weight read.

Run: ``python bench/decode_step.py`` (~2 min) -> ``bench/results/decode_step.{json,md}``.
"""

from __future__ import annotations

import argparse
import time

from _util import command_line, machine_info, matmul_peak_gflops, md_table, median, set_threads, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import StaticCache

    from tokengym.models import load_causal_lm

    _, model = load_causal_lm()
    model.eval()
    cfg = model.config
    P = args.prompt_tokens

    def decode(B: int, steps: int, static: bool = False, prof: bool = False) -> tuple[list[float], float]:
        """Median-able per-step wall times of ``steps`` decode steps after a P-token prefill of B rows."""
        g = torch.Generator().manual_seed(B)
        ids = torch.randint(100, 20000, (B, P), generator=g)
        mask = torch.ones(B, P, dtype=torch.long)
        kw = {"past_key_values": StaticCache(config=cfg, max_cache_len=P + steps + 1)} if static else {}
        times, mm_s = [], 0.0
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **kw)
            pos = torch.full((B, 1), P)
            for _ in range(steps):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
                t0 = time.perf_counter()
                out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values, use_cache=True)
                times.append(time.perf_counter() - t0)
                pos = pos + 1
            if prof:
                with profile(activities=[ProfilerActivity.CPU]) as p:
                    for _ in range(4):
                        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
                        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values, use_cache=True)
                        pos = pos + 1
                total = sum(e.self_cpu_time_total for e in p.key_averages())
                mm = sum(e.self_cpu_time_total for e in p.key_averages() if e.key in ("aten::mm", "aten::addmm"))
                mm_s = mm / max(total, 1)
        return times, mm_s

    def bench(fn, n: int = 20) -> float:
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    layer = model.model.layers[0]
    shapes = {"q_proj": layer.self_attn.q_proj.weight, "k_proj": layer.self_attn.k_proj.weight,
              "v_proj": layer.self_attn.v_proj.weight, "o_proj": layer.self_attn.o_proj.weight,
              "gate_proj": layer.mlp.gate_proj.weight, "up_proj": layer.mlp.up_proj.weight,
              "down_proj": layer.mlp.down_proj.weight}
    L = cfg.num_hidden_layers
    head = model.get_output_embeddings().weight

    def matmul_floor(B: int) -> dict[str, float]:
        """Isolated, cache-hot matmuls of one decode step: F.linear, MKL packed, oneDNN (seconds per step)."""
        out = {"linear": 0.0, "mkl_packed": 0.0, "onednn": 0.0}
        for name, w in [*shapes.items(), ("lm_head", head)]:
            reps = 1 if name == "lm_head" else L
            x = torch.randn(B, w.shape[1])
            out["linear"] += reps * bench(lambda: torch.nn.functional.linear(x, w))
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, B)
            out["mkl_packed"] += reps * bench(lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, B))
            wd = w.to_mkldnn()
            out["onednn"] += reps * bench(lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), wd, None).to_dense())
        return out

    peak = matmul_peak_gflops()
    n_params = sum(p.numel() for p in model.parameters())
    rows, data = [], {}
    for B in sorted({args.batch, 32, 64}):
        dyn, mm_share = decode(B, args.steps, prof=True)
        sta, _ = decode(B, args.steps, static=True)
        mf = matmul_floor(B)
        step = median(dyn[2:])
        flop_s = 2 * n_params * B / (peak * 1e9)
        data[B] = {"step_s": step, "static_cache_step_s": median(sta[2:]), "mm_share": mm_share, "matmul_floor_s": mf,
                   "flop_floor_s": flop_s}
        rows.append([B, step * 1e3, step * 1e3 / B, 100 * mm_share, median(sta[2:]) * 1e3, mf["linear"] * 1e3,
                     mf["mkl_packed"] * 1e3, mf["onednn"] * 1e3, flop_s * 1e3, 100 * flop_s / step])
    B0 = args.batch
    d0 = data[B0]
    md = "\n".join([
        f"### One SmolLM2-135M decode step (fp32, {args.prompt_tokens}-token prompts, KV cache, {args.threads} thread)", "",
        md_table(["rows M", "step ms (dynamic cache)", "ms per row", "% of step in matmul", "step ms (StaticCache)",
                  "its matmuls alone ms (F.linear, cache-hot)", "MKL packed ms", "oneDNN ms", "FLOP floor ms", "% of matmul peak"], rows),
        "",
        f"* fp32 matmul peak in this process: {peak:.1f} GFLOP/s (2048x2048). FLOP floor = 2 x parameters x rows at that peak.",
        f"* At M = {B0}: matmuls are {100 * d0['mm_share']:.0f} % of the step, and the step's matmuls alone (hot caches) take "
        f"{d0['matmul_floor_s']['linear'] / d0['step_s']:.2f}x the whole step; MKL pre-packed weights take "
        f"{d0['matmul_floor_s']['mkl_packed'] / d0['matmul_floor_s']['linear']:.2f}x and oneDNN "
        f"{d0['matmul_floor_s']['onednn'] / d0['matmul_floor_s']['linear']:.2f}x the `F.linear` time; StaticCache "
        f"{d0['static_cache_step_s'] / d0['step_s']:.2f}x the dynamic-cache step. Per row, M = 64 costs "
        f"{(d0['step_s'] / B0) / (data[64]['step_s'] / 64):.2f}x less than M = {B0}: more rows per weight read is what raises the efficiency.",
        f"* Command: `{command_line()}` ({machine_info()['date']}, load average {machine_info()['load_average'][0]:.1f})",
    ])
    write_results("decode_step", {"command": command_line(), "machine": machine_info(), "peak_gflops": peak,
                                  "batches": data}, md)
    print(md)


if __name__ == "__main__":
    main()
