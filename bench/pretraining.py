"""Does pretraining help? The sequence model fine-tuned from the behaviour encoder against the
same model from random weights, and against the newest XGBoost version, on the promotion window.

An ablation on the state `make run` leaves (`.local/`): the frozen split of the last run, its
pretrained encoder (`.local/training/behaviour_encoder.pt`) and its registry. Both arms use the
same settings (the encoder's size, `--max-epochs`, `--max-train-rows`, the demo's other defaults)
and the same seeds (`--seeds`); only the starting weights differ. Every figure is the
promotion-window PR-AUC with a 95 % interval that resamples shoppers, every comparison a paired
difference on the same resampled shoppers (per seed, and for the seed-averaged scores).

Writes ``bench/results/pretraining.json`` and ``bench/results/pretraining.md``. Usage, after
``make run``::

    .venv/bin/python bench/pretraining.py                 # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # so `ml` imports when run as a plain script

from bench.machine import machine_info  # noqa: E402
from ml import settings  # noqa: E402
from ml.evaluation.bootstrap import bootstrap_metrics, paired_differences  # noqa: E402
from ml.families.torch_seq.encoder import encoder_architecture  # noqa: E402
from ml.families.torch_seq.pretrain import PretrainParams  # noqa: E402
from ml.families.torch_seq.train import predict_proba, train_sequence_model  # noqa: E402
from ml.registry import MODEL_NAME, newest_versions_by_family, predict_version  # noqa: E402
from ml.splits import load_split_snapshot  # noqa: E402

RESULTS = PROJECT_ROOT / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--max-train-rows", type=int, default=10_000)
    parser.add_argument("--n-resamples", type=int, default=1000)
    args = parser.parse_args()

    data, snapshot_id = load_split_snapshot(settings.training_dir() / "split", with_sequences=True)
    size = encoder_architecture(settings.encoder_path())
    if size is None:
        raise SystemExit(f"No encoder at {settings.encoder_path()}: run `make run` first")
    params = replace(
        PretrainParams(**size).seq_params(),
        max_epochs=args.max_epochs,
        max_train_rows=args.max_train_rows,
        batch_size=512,
    )
    promotion = data.model_input("promotion")
    y, users = data.y_promotion, data.keys_promotion["user_id"].to_numpy()

    scores: dict[str, list[np.ndarray]] = {"pretrained": [], "from_scratch": []}
    fits = []
    for seed in args.seeds:
        for arm, pretrained in (("pretrained", True), ("from_scratch", False)):
            started = time.perf_counter()
            trained = train_sequence_model(data, replace(params, pretrained=pretrained), seed)
            scores[arm].append(predict_proba(trained, promotion))
            fits.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "best_epoch": trained.best_epoch,
                    "validation_pr_auc": trained.best_validation_pr_auc,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(fits[-1], flush=True)

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    versions = newest_versions_by_family(mlflow.MlflowClient())
    xgboost = predict_version(MODEL_NAME, versions["xgboost"], promotion)

    def interval(s: np.ndarray) -> dict:
        return bootstrap_metrics(y, s, users, args.n_resamples, names=("pr_auc",))[
            "pr_auc"
        ].to_dict()

    def difference(a: np.ndarray, b: np.ndarray) -> dict:
        return paired_differences(y, a, b, users, args.n_resamples, names=("pr_auc",))[
            "pr_auc"
        ].to_dict()

    per_seed = []
    for index, seed in enumerate(args.seeds):
        pretrained, scratch = scores["pretrained"][index], scores["from_scratch"][index]
        per_seed.append(
            {
                "seed": seed,
                "pretrained": interval(pretrained),
                "from_scratch": interval(scratch),
                "pretrained_minus_from_scratch": difference(pretrained, scratch),
                "pretrained_minus_xgboost": difference(pretrained, xgboost),
            }
        )
    mean = {arm: np.mean(values, axis=0) for arm, values in scores.items()}
    averaged = {
        "pretrained": interval(mean["pretrained"]),
        "from_scratch": interval(mean["from_scratch"]),
        "xgboost": interval(xgboost),
        "pretrained_minus_from_scratch": difference(mean["pretrained"], mean["from_scratch"]),
        "pretrained_minus_xgboost": difference(mean["pretrained"], xgboost),
        "from_scratch_minus_xgboost": difference(mean["from_scratch"], xgboost),
    }
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(["torch", "mlflow"], str(PROJECT_ROOT)),
        "snapshot_id": snapshot_id,
        "encoder": size,
        "params": params.to_dict(),
        "xgboost_version": versions["xgboost"],
        "promotion_rows": int(len(y)),
        "promotion_buyers": int(y.sum()),
        "promotion_users": int(len(set(users))),
        "fits": fits,
        "per_seed": per_seed,
        "seed_averaged": averaged,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pretraining.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "pretraining.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _interval(entry: dict) -> str:
    return f"{entry['estimate']:.4f} [{entry['low']:.4f}, {entry['high']:.4f}]"


def _difference(entry: dict) -> str:
    reading = (
        "first better"
        if entry["low"] > 0
        else "second better"
        if entry["high"] < 0
        else "not distinguishable"
    )
    return f"{entry['estimate']:+.4f} [{entry['low']:+.4f}, {entry['high']:+.4f}] ({reading})"


def markdown(result: dict) -> str:
    averaged = result["seed_averaged"]
    lines = [
        "# Pretrained encoder vs from scratch vs XGBoost (promotion-window PR-AUC)",
        "",
        f"Measured {result['measured_at']} on snapshot {result['snapshot_id']}: "
        f"{result['promotion_rows']:,} rows, {result['promotion_buyers']:,} buyers, "
        f"{result['promotion_users']:,} users; 95 % intervals resample users. Both arms: a GRU "
        f"of the encoder's size {result['encoder']}, the same settings and seeds; XGBoost: "
        f"registry version {result['xgboost_version']} (with the order-aware features).",
        "",
        "| seed | pretrained | from scratch | pretrained minus from scratch | "
        "pretrained minus XGBoost |",
        "|---|---|---|---|---|",
    ]
    for entry in result["per_seed"]:
        lines.append(
            f"| {entry['seed']} | {_interval(entry['pretrained'])} | "
            f"{_interval(entry['from_scratch'])} | "
            f"{_difference(entry['pretrained_minus_from_scratch'])} | "
            f"{_difference(entry['pretrained_minus_xgboost'])} |"
        )
    lines += [
        "",
        "Scores averaged over the seeds:",
        "",
        f"- pretrained {_interval(averaged['pretrained'])}, from scratch "
        f"{_interval(averaged['from_scratch'])}, XGBoost {_interval(averaged['xgboost'])}",
        "- pretrained minus from scratch: "
        + _difference(averaged["pretrained_minus_from_scratch"]),
        f"- pretrained minus XGBoost: {_difference(averaged['pretrained_minus_xgboost'])}",
        f"- from scratch minus XGBoost: {_difference(averaged['from_scratch_minus_xgboost'])}",
        "",
        "Fits: "
        + "; ".join(
            f"{f['arm']} seed {f['seed']}: best epoch {f['best_epoch']}, validation PR-AUC "
            f"{f['validation_pr_auc']:.4f}, {f['seconds']} s"
            for f in result["fits"]
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
