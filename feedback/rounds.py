"""Iterated RLHF on the main task (``tokengym rlhf``): rounds of candidates -> labels -> reward model -> PPO.

Round 0 is the main job: the task's reward model (learned from comparisons of the reference policy's
samples, :mod:`.default_rm`) pays PPO. Every later round asks the simulated annotators about the
*current* policy's samples, which is where the previous reward model is least reliable, trains a
fresh reward model on those comparisons (normalised on the current policy's samples, so its reward
starts at mean 0 again), and runs PPO from the current policy with the current policy as the new
reference: each round spends its own KL budget.

Each round writes ``OUTPUT_DIR/round<r>/`` (a full training run: report, metrics, curves, final
model) and, from round 1 on, ``OUTPUT_DIR/reward_model_round<r>/``; ``rounds.json`` lists per round
the reward model's held-out accuracy, the held-out gold score before and after PPO, and the KL of
the round's policy to its own reference and to the original model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .default_rm import DEFAULT_RECIPE, RewardModelRecipe


def run_rounds(rounds: int = 2, output_dir: str = "runs/rlhf", seed: int = 0, iterations: int | None = None,
               overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print, *,
               recipe: RewardModelRecipe = DEFAULT_RECIPE, reward_model: Callable[[], tuple[Any, Any]] | None = None,
               train_overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds on ``tokengym/PositiveReview-v1``; returns one summary per round.

    ``recipe`` is round 0's reward-model recipe (its ``policy`` is also the policy round 0 trains);
    ``reward_model`` builds each round's fresh reward model (default: MiniLM) and ``train_overrides``
    are TrainConfig keys for every round's PPO run: tests pass tiny models and sizes here.
    """
    from tokengym.models import load_causal_lm
    from tokengym.train import make_train_config, print_table, run
    from tokengym.utils import atomic_write_text, check_run_folder, write_marker

    from .default_rm import build_reward_model, ensure_reward_model

    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    out = Path(output_dir)
    check_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "rlhf rounds")
    summaries: list[dict[str, Any]] = []
    model, reward_dir = recipe.policy, None
    for r in range(rounds):
        if r == 0:
            reward_dir = ensure_reward_model(recipe, progress=progress, log=log, reward_model=reward_model)
        else:
            # The annotators now judge what the policy actually writes; a new seed gives new samples.
            round_recipe = replace(recipe, policy=model, seed=recipe.seed + r)
            reward_dir = out / f"reward_model_round{r}"
            if not (reward_dir / "build.json").is_file():
                log(f"round {r}: labelling the current policy's samples and training a new reward model ...")
                build_reward_model(reward_dir, round_recipe, progress=progress, log=log, policy=load_causal_lm(model),
                                   reward_model=reward_model)
        build = json.loads((Path(reward_dir) / "build.json").read_text())
        data: dict[str, Any] = {**(train_overrides or {}), "model": model, "output_dir": str(out / f"round{r}"),
                                "reward": {"name": "learned", "path": str(reward_dir)}}
        if iterations is not None:
            data["iterations"] = iterations
        cfg = make_train_config(data, seed=seed + r)
        log(f"round {r}: PPO from {model} on reward model {reward_dir} "
            f"(held-out accuracy vs gold {build['heldout_gold_accuracy']:.3f})")
        report = run(cfg, overwrite=overwrite, progress=progress, log=log)
        next_model = str(out / f"round{r}" / "final_model")
        if report is None:  # another rank under torchrun: it follows rank 0's model into the next round
            model = next_model
            continue
        print_table(f"round {r}: held-out evaluation", report["before"], report["after"], log)
        # Each round's KL budget is spent against its own reference, so the distance from the model
        # the user started with adds up over the rounds: measure it, on the same samples.
        original = report["after"] if r == 0 else evaluate_against(cfg, next_model, recipe.policy)
        summaries.append({
            "round": r, "policy_before": model, "reward_model": str(reward_dir),
            "rm_heldout_gold_accuracy": build["heldout_gold_accuracy"], "rm_heldout_accuracy": build["heldout_accuracy"],
            "gold_before": report["before"]["gold_score"], "gold_after": report["after"]["gold_score"],
            "kl_to_round_reference": report["after"]["kl_to_reference"],
            "perplexity_before": report["before"]["reference_perplexity"],
            "perplexity_after": report["after"]["reference_perplexity"],
            "distinct_2_before": report["before"]["distinct_2"], "distinct_2_after": report["after"]["distinct_2"],
            "kl_to_original": original["kl_to_reference"],
            "perplexity_under_original": original["reference_perplexity"],
            "wall_time_s": report["wall_time_s"],
        })
        atomic_write_text(out / "rounds.json", json.dumps(summaries, indent=1) + "\n")
        model = next_model
    for s in summaries:
        log(f"round {s['round']}: RM gold accuracy {s['rm_heldout_gold_accuracy']:.3f}; held-out gold "
            f"{s['gold_before']:+.3f} -> {s['gold_after']:+.3f} at KL {s['kl_to_round_reference']:.2f} to the round's reference, "
            f"{s['kl_to_original']:.2f} to the original model")
    return summaries


def evaluate_against(cfg: Any, policy: str, reference: str) -> dict[str, float]:
    """The held-out evaluation of ``policy`` that ``tokengym train`` with ``cfg`` ends with (same
    prompts, seed and batching, hence the same samples), with ``reference`` as the reference."""
    from tokengym.agents.evaluation import evaluate_policy
    from tokengym.train import load_policy_and_reference, make_envs

    tok, model, _, ref_fn = load_policy_and_reference(policy, reference, cfg.ppo.temperature)
    _, test_env = make_envs(cfg, tok, cfg.ppo.batch_size)
    metrics, _ = evaluate_policy(model, ref_fn, test_env, cfg.eval_episodes, seed=cfg.ppo.seed,
                                 temperature=cfg.ppo.temperature)
    return metrics
