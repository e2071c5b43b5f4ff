"""The main job from Python: exactly ``tokengym train`` (same defaults, protocol, report and plots).

    python examples/main_job.py                 # SmolLM2, the learned reward, ~7 min on 2 cores after the RM build
    python examples/main_job.py --seed 1 --eval-every 2
"""

import argparse

from tokengym.train import make_train_config, print_report, run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--eval-every", type=int, default=0, help="held-out points every K iterations (0 = before/after)")
parser.add_argument("--output-dir", default="runs/example_main_job")
args = parser.parse_args()

# Any TrainConfig key, and a "ppo" section of PPOConfig keys, may be given here; the rest are the defaults.
cfg = make_train_config({"output_dir": args.output_dir, "eval_every": args.eval_every}, seed=args.seed)
report = run(cfg, overwrite=True)  # only a folder this run marked as tokengym's is ever replaced
print_report(report, cfg)
