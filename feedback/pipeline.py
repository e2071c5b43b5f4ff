"""The RLHF loop: candidates -> simulated labels -> reward model -> PPO -> new candidates -> ...

:func:`run_rlhf_rounds` runs N rounds against one feedback store. The PPO step is a parameter
(``ppo_step(policy, tokenizer, reward_dir, round) -> policy``) so the loop does not depend on one
agent; :func:`ppo_agent_step` adapts ``tokengym.agents.PPOAgent``.

Every round reports the gold judge's mean score of the policy's candidates *before* that round's
PPO step, and a last entry scores the final policy, so the list reads as "gold score per policy".
The reward model is retrained from the base encoder each round on all labels so far, and normalised
on round-0 candidates (the reference policy), so its scale stays comparable across rounds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .candidates import CandidateGenerator, DecodingStrategy, parse_strategies
from .rm_training import RMConfig, train_reward_model
from .simulate import Judge, LabelSimulator, SimulatedAnnotator
from .store import FeedbackStore

PPOStep = Callable[[Any, Any, Path, int], Any]


@dataclass
class RoundReport:
    round: int
    gold_mean: float  # gold judge, mean over this round's candidates
    n_candidates: int
    n_labels: int  # simulated judgements added this round (0 for the final evaluation)
    rm_heldout_accuracy: float | None = None
    rm_gold_accuracy: float | None = None
    reward_model: str | None = None

    def line(self) -> str:
        rm = "" if self.rm_heldout_accuracy is None else (
            f"  RM held-out acc {self.rm_heldout_accuracy:.3f} (gold {self.rm_gold_accuracy or float('nan'):.3f})")
        return f"round {self.round}: gold mean {self.gold_mean:+.4f} over {self.n_candidates} candidates{rm}"


def run_rlhf_rounds(
    store: FeedbackStore,
    tokenizer: Any,
    policy: Any,
    prompts: Sequence[str],
    judge: Judge,
    ppo_step: PPOStep,
    work_dir: str | Path,
    rounds: int = 2,
    per_prompt: int = 4,
    strategies: Sequence[DecodingStrategy] | str = "sample,top_p:0.9",
    pairs_per_round: int = 200,
    annotators: Sequence[SimulatedAnnotator] | None = None,
    rm_config: RMConfig | None = None,
    rm_model: Callable[[], tuple[Any, Any]] | None = None,
    max_new_tokens: int = 24,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> list[RoundReport]:
    """Run ``rounds`` RLHF rounds; returns ``rounds + 1`` reports (the last scores the final policy).

    ``rm_model``: builds a fresh ``(tokenizer, model)`` reward model each round (default: the
    encoder of ``rm_config.base_model``). ``annotators`` default to one 90 %-accurate annotator.
    """
    work_dir = Path(work_dir)
    strategies = parse_strategies(strategies) if isinstance(strategies, str) else list(strategies)
    annotators = list(annotators or [SimulatedAnnotator("sim-0", accuracy=0.9, seed=seed)])
    rm_cfg = rm_config or RMConfig(reference_round=0, seed=seed)
    reports: list[RoundReport] = []
    for r in range(rounds + 1):
        gen = CandidateGenerator(tokenizer, policy, max_new_tokens=max_new_tokens, seed=seed + r)
        gen.to_store(store, prompts, per_prompt, strategies, round=r, model_name=f"policy-round{r}")
        sim = LabelSimulator(store, judge, seed=seed + r)
        cands = store.candidates(round=r)
        gold = sim.gold(cands)
        report = RoundReport(r, float(np.mean(list(gold.values()))), len(cands), 0)
        if r < rounds:  # the last "round" only evaluates the final policy
            report.n_labels = sim.label_pairs(annotators, sim.sample_pairs(pairs_per_round, round=r))
            out = work_dir / f"reward_model_round{r}"
            result = train_reward_model(store, out, rm_cfg, judge=judge,
                                        model=rm_model() if rm_model else None, log=None)
            report.rm_heldout_accuracy, report.rm_gold_accuracy = result.heldout_accuracy, result.heldout_gold_accuracy
            report.reward_model = str(out)
            policy = ppo_step(policy, tokenizer, out, r)
        reports.append(report)
        if log:
            log(report.line())
    (work_dir / "rounds.json").write_text(json.dumps([asdict(x) for x in reports], indent=2) + "\n")
    return reports


def ppo_agent_step(iterations: int, env_kwargs: dict[str, Any] | None = None,
                   config: Any = None) -> PPOStep:
    """A :data:`PPOStep` running ``tokengym.agents.PPOAgent`` for ``iterations`` on the learned reward.

    ``env_kwargs`` go to ``tokengym.envs.BatchedTextEnv`` (prompts, max_new_tokens, ...); the
    environment's reward is the reward model folder of the round, loaded by the ``learned`` reward.
    """
    def step(policy: Any, tokenizer: Any, reward_dir: Path, round: int) -> Any:
        from tokengym.agents import PPOAgent, PPOConfig
        from tokengym.envs import BatchedTextEnv

        cfg = config or PPOConfig(seed=round)
        env = BatchedTextEnv(num_envs=cfg.batch_size, tokenizer=tokenizer, reward=str(reward_dir),
                             **(env_kwargs or {}))
        agent = PPOAgent(env, model=policy, config=cfg)
        agent.learn(iterations, progress=False)
        return agent.ac.policy

    return step
