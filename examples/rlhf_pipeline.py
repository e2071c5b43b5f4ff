"""The whole RLHF loop in one command: candidates -> simulated labels -> reward model -> PPO -> repeat.

Each round the current policy writes candidates for the prompts, simulated annotators (a gold judge
seen through Bradley-Terry noise, 90 % accurate) compare pairs of them, a reward model is trained on
every label so far, and PPO optimises the policy against that reward model. The gold judge's mean
score of each round's candidates is printed, plus one last line for the final policy.

    python examples/rlhf_pipeline.py --tiny                 # smoke run: tiny random policy and reward model
    python examples/rlhf_pipeline.py --rounds 3 --ppo-iterations 20
                                                            # SmolLM2 policy, MiniLM reward model, VADER gold

The same steps as separate commands (a human can label instead of the simulator)::

    tokengym candidates --store fb.sqlite --prompts movie_reviews --limit 32 --round 0
    tokengym simulate-labels --store fb.sqlite --pairs 500     # or: tokengym label --store fb.sqlite --serve
    tokengym train-rm --store fb.sqlite --out rm0 --gold vader
    tokengym train --reward rm0 ...                              # PPO on the learned reward
    tokengym candidates --store fb.sqlite --model <trained policy folder> --round 1 ...
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tokengym.envs.prompts import load_prompts
from tokengym.feedback.pipeline import ppo_agent_step, run_rlhf_rounds
from tokengym.feedback.rm_training import RMConfig, tiny_reward_model
from tokengym.feedback.simulate import make_annotators, resolve_judge
from tokengym.feedback.store import FeedbackStore
from tokengym.utils import seed_everything


def length_judge(prompts, responses):
    """Gold judge for --tiny: a random tiny policy writes no sentiment for VADER to see."""
    return [float(len(r)) for r in responses]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16, help="prompts of the movie_reviews train split")
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=64, help="simulated comparisons per round")
    ap.add_argument("--ppo-iterations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="tiny random models (seconds, for a smoke test)")
    ap.add_argument("--work-dir", default=None, help="keep the store and reward models here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    seed_everything(args.seed)

    from tokengym.agents import PPOConfig
    from tokengym.models import load_causal_lm, make_tiny_causal_lm

    prompts = load_prompts("movie_reviews", split="train").texts()[: args.prompts]
    if args.tiny:
        tokenizer, policy = make_tiny_causal_lm(seed=args.seed)
        judge = length_judge
        rm_config = RMConfig(epochs=1, lr=1e-3, batch_size=16, max_length=48, seed=args.seed)
        rm_model = lambda: tiny_reward_model(seed=args.seed)  # noqa: E731
    else:
        tokenizer, policy = load_causal_lm("smollm2")
        judge = resolve_judge("vader")
        rm_config = RMConfig(epochs=1, lr=3e-4, batch_size=32, max_length=64, seed=args.seed)
        rm_model = None  # all-MiniLM-L6-v2
    ppo = ppo_agent_step(
        args.ppo_iterations,
        env_kwargs={"prompts": prompts, "split": None, "max_new_tokens": args.max_new_tokens},
        config=PPOConfig(seed=args.seed, batch_size=8, minibatch_size=4, micro_batch_size=4, ppo_epochs=2,
                         checkpoint_every=0),
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with FeedbackStore(work / "feedback.sqlite") as store:
            reports = run_rlhf_rounds(
                store, tokenizer, policy, prompts, judge, ppo, work, rounds=args.rounds, per_prompt=args.per_prompt,
                pairs_per_round=args.pairs, annotators=make_annotators(1, accuracy=0.9, seed=args.seed),
                rm_config=rm_config, rm_model=rm_model, max_new_tokens=args.max_new_tokens, seed=args.seed,
            )
    print("\ngold judge score per round (round N = the policy after N PPO phases):")
    for r in reports:
        print(f"  {r.round}: {r.gold_mean:+.4f}")


if __name__ == "__main__":
    main()
