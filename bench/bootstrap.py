"""How long the user-level bootstrap takes: every metric of several models, paired, on a window
shaped like the demo's promotion window (about 38,000 rows of 13,000 users, 2.2 % buyers).

    .venv/bin/python bench/bootstrap.py [--rows N] [--users N] [--models N] [--resamples N]

Prints the seconds per step (best of --repeat) and writes bench/results/bootstrap.json. Time
whole runs with `farm-bench` for figures to write down.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `ml` as a script

from bench.machine import PROJECT_ROOT, machine_info  # noqa: E402
from ml.evaluation.bootstrap import bootstrap_draws, point_metrics  # noqa: E402

RESULTS = PROJECT_ROOT / "bench" / "results" / "bootstrap.json"


def window(rows: int, users: int, models: int, seed: int = 0) -> tuple:
    """Labels, user ids and `models` noisy scores of one latent propensity per user."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    propensity = rng.beta(0.4, 15.0, users)
    y = (rng.random(rows) < propensity[user]).astype(np.int64)
    scores = {
        f"model_{i}": np.clip(propensity[user] + rng.normal(0, 0.02 * (i + 1), rows), 1e-4, 1)
        for i in range(models)
    }
    return y, user, scores


def best_of(repeat: int, step) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=38_000)
    parser.add_argument("--users", type=int, default=13_000)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    y, user, scores = window(args.rows, args.users, args.models)
    first = next(iter(scores))
    seconds = {
        "point_metrics_one_model": best_of(args.repeat, lambda: point_metrics(y, scores[first])),
        "draws_one_model": best_of(
            args.repeat,
            lambda: bootstrap_draws(y, {first: scores[first]}, user, args.resamples),
        ),
        "draws_all_models": best_of(
            args.repeat, lambda: bootstrap_draws(y, scores, user, args.resamples)
        ),
        "draws_all_models_pr_auc_only": best_of(
            args.repeat,
            lambda: bootstrap_draws(y, scores, user, args.resamples, names=("pr_auc",)),
        ),
    }
    result = {
        "args": vars(args),
        "buyers": int(y.sum()),
        "seconds": seconds,
        "machine": machine_info(["numpy", "scipy"], "ml/evaluation"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in seconds.items():
        print(f"{name:<32} {value:8.3f} s")
    print(f"written to {Path(RESULTS).relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
