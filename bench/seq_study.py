"""The sequence family's whole study on one device, end to end: what a GPU machine checks in one
call (and what the CPU runs in a minute at its own, smaller size).

With the project's own code and synthetic shoppers whose purchases show in the order of their
last events (``ml.synthetic_split``), it runs what the Dagster assets run for the sequence
family, minus the warehouse and MLflow:

1. **pretraining**: the behaviour encoder on the tuning roles' sequences
   (``pretrain.pretrain_encoder``), saved where trials read it;
2. **the Optuna study**: ``--trials`` trials of the family's search space (``search.SeqSearch``
   sized for the device: SIZES), a pretrained and a from-scratch trial first, median pruning
   after every epoch, as ``ml.study.tune`` runs it;
3. **scoring**: the best trial's model scores the promotion role on the device (timed), and a
   copy of it on the CPU (the path of the registered pyfunc that the gate uses) scores a sample
   of the same rows: the two must agree (``--tolerance``, on probabilities), which checks that
   scoring on a GPU is float32 (no bf16 logits, no TF32);
4. **figures**: seconds per stage, training sequences/s (rows x epochs per second of each trial,
   its validation passes included), inference sequences/s, peak GPU memory, validation PR-AUC
   per trial and the promotion-role PR-AUC of the best model, and whether the study found the
   signal (promotion PR-AUC at least twice the buyer rate).

The device is ``ml.families.torch_seq.train.torch_device`` (``PROPENSITY_TORCH_DEVICE=cpu``
forces the CPU); ``PROPENSITY_TORCH_COMPILE=1`` compiles the network. Exits 1 when a check
fails. Writes ``bench/results/<name>.json`` and ``.md`` (default name ``seq_study_<device>``).

On the GPU machine, which has torch, numpy, pandas, scikit-learn and pyarrow but not Optuna,
colorlog or DuckDB (read by ``ml.dataset``), first fetch those as wheels here with
``bash bench/gpu_wheels.sh`` (into the git-ignored ``.whl/``), then run there, carrying
``.whl``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \\
        && PYTHONPATH=/tmp/site python3 bench/seq_study.py

Here (CPU, about a minute)::

    .venv/bin/python bench/seq_study.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from sklearn.metrics import average_precision_score

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # so `ml` imports when run as a plain script

from bench.machine import machine_info  # noqa: E402
from ml.families.torch_seq.encoder import save_encoder  # noqa: E402
from ml.families.torch_seq.net import SeqParams  # noqa: E402
from ml.families.torch_seq.pretrain import PretrainParams, pretrain_encoder  # noqa: E402
from ml.families.torch_seq.search import SeqSearch, first_trials, suggest_params  # noqa: E402
from ml.families.torch_seq.train import (  # noqa: E402
    TrainedSequenceModel,
    compile_requested,
    inference_batch_size,
    input_tensors,
    predict_logits,
    torch_device,
    train_sequence_model,
)
from ml.synthetic_split import make_split_data  # noqa: E402

DEFAULT_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"


@dataclass(frozen=True)
class StudySize:
    """How big the study is on one kind of device: data, search, budgets."""

    train_rows: int
    eval_rows: int  # rows of the validation role and of the promotion role each
    trials: int
    search: SeqSearch
    pretrain: PretrainParams
    cpu_check_rows: int  # promotion rows scored again on the CPU


SIZES = {
    "cpu": StudySize(
        train_rows=6_000,
        eval_rows=2_000,
        trials=3,
        search=SeqSearch(
            max_epochs=2,
            max_train_rows=0,
            hidden_sizes=[32, 64],
            max_layers=1,
            batch_sizes=[512, 1024],
            max_lengths=[30],
        ),
        pretrain=PretrainParams(max_epochs=1, max_rows=4_000, batch_size=512),
        cpu_check_rows=2_000,
    ),
    "cuda": StudySize(
        train_rows=1_000_000,
        eval_rows=250_000,
        trials=6,
        search=SeqSearch(
            max_epochs=6,
            max_train_rows=0,
            hidden_sizes=[64, 128],
            max_layers=2,
            batch_sizes=[4_096, 16_384],
            max_lengths=[50],
        ),
        pretrain=PretrainParams(max_epochs=2, max_rows=0, batch_size=8_192),
        cpu_check_rows=20_000,
    ),
}


def run_study(
    data: Any, size: StudySize, device: torch.device, seed: int
) -> tuple[optuna.Study, TrainedSequenceModel, list[dict[str, Any]]]:
    """The Optuna study of the family's search space; returns the best trial's model."""
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    for params in first_trials(size.search):
        study.enqueue_trial(params)
    models: dict[int, TrainedSequenceModel] = {}
    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = SeqParams.from_dict(suggest_params(trial, size.search))

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        started = time.perf_counter()
        try:
            trained = train_sequence_model(data, params, seed=0, device=device, on_epoch=report)
        finally:
            _synchronize(device)
        seconds = time.perf_counter() - started
        models[trial.number] = trained
        rows_seen = trained.train_rows * trained.epochs_trained
        trials.append(
            {
                "trial": trial.number,
                "pretrained": params.pretrained,
                "encoder": params.encoder,
                "hidden_size": params.hidden_size,
                "num_layers": params.num_layers,
                "batch_size": params.batch_size,
                "epochs": trained.epochs_trained,
                "best_epoch": trained.best_epoch,
                "validation_pr_auc": round(trained.best_validation_pr_auc, 4),
                "seconds": round(seconds, 2),
                "train_sequences_per_second": round(rows_seen / seconds),
            }
        )
        print(f"trial {trials[-1]}", flush=True)
        return trained.best_validation_pr_auc

    study.optimize(objective, n_trials=size.trials)
    return study, models[study.best_trial.number], trials


def score_on_device_and_cpu(
    model: TrainedSequenceModel, data: Any, device: torch.device, check_rows: int
) -> dict[str, Any]:
    """The promotion role scored on the device (timed) and a sample of it on the CPU."""
    frame = data.model_input("promotion")
    tensors = input_tensors(model, frame).to(device)
    batch = inference_batch_size(device, model.params.batch_size)
    predict_logits(model.net, tensors, batch, device)  # warm-up
    _synchronize(device)
    started = time.perf_counter()
    logits = predict_logits(model.net, tensors, batch, device)
    seconds = time.perf_counter() - started
    on_device = 1.0 / (1.0 + np.exp(-logits))

    cpu_net = copy.deepcopy(model.net).to("cpu")
    sample = frame.iloc[:check_rows]
    cpu_logits = predict_logits(cpu_net, input_tensors(model, sample), 1024, torch.device("cpu"))
    on_cpu = 1.0 / (1.0 + np.exp(-cpu_logits))
    y = data.y_promotion
    return {
        "rows": len(frame),
        "inference_batch_size": batch,
        "inference_seconds": round(seconds, 3),
        "inference_sequences_per_second": round(len(frame) / seconds),
        "promotion_pr_auc": round(float(average_precision_score(y, on_device)), 4),
        "buyer_rate": round(float(np.mean(y)), 4),
        "cpu_check_rows": len(sample),
        "max_probability_difference_device_vs_cpu": float(
            np.max(np.abs(on_device[: len(sample)] - on_cpu))
        ),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def markdown(report: dict[str, Any]) -> str:
    scoring, checks = report["scoring"], report["checks"]
    lines = [
        f"# The sequence study end to end on {report['device']}",
        "",
        f"{report['date']}; {report['gpu']}; torch {report['machine']['versions']['torch']}; "
        f"compiled: {report['compiled']}.",
        "",
        f"Data: {report['data']}",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {stage} | {seconds} |" for stage, seconds in report["seconds"].items()),
        "",
        f"Pretraining: {report['pretraining']}",
        "",
        "| trial | start | encoder | hidden | layers | batch | epochs | validation PR-AUC "
        "| seconds | train seq/s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report["trials"]:
        lines.append(
            f"| {t['trial']} | {'pretrained' if t['pretrained'] else 'from scratch'} "
            f"| {t['encoder']} | {t['hidden_size']} | {t['num_layers']} | {t['batch_size']:,} "
            f"| {t['epochs']} | {t['validation_pr_auc']} | {t['seconds']} "
            f"| {t['train_sequences_per_second']:,} |"
        )
    lines += [
        "",
        f"Trials complete / pruned: {report['trials_complete']} / {report['trials_pruned']}; "
        f"best trial {report['best_trial']}.",
        "",
        f"Scoring the promotion role ({scoring['rows']:,} rows, batches of "
        f"{scoring['inference_batch_size']:,}): {scoring['inference_sequences_per_second']:,} "
        f"sequences/s; PR-AUC {scoring['promotion_pr_auc']} (buyer rate "
        f"{scoring['buyer_rate']}). Peak GPU memory: {report['peak_gpu_memory_mb']} MB.",
        "",
        "Checks:",
        "",
        *(f"- {name}: {'pass' if ok else 'FAIL'}" for name, ok in checks.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=0, help="default: the device's size")
    parser.add_argument("--train-rows", type=int, default=0, help="default: the device's size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest |probability on the device - on the CPU| accepted",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--name", default="", help="results file name (seq_study_<device>)")
    args = parser.parse_args(argv)

    device = torch_device()
    size = SIZES[device.type]
    train_rows = args.train_rows or size.train_rows
    eval_rows = max(train_rows * size.eval_rows // size.train_rows, 200)
    size = replace(size, trials=args.trials or size.trials)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU used"
    print(f"device {device} ({gpu}); compile {compile_requested()}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    data = make_split_data(args.seed, train_rows, eval_rows, with_sequences=True)
    seconds["synthetic data"] = round(time.perf_counter() - started, 1)

    with tempfile.TemporaryDirectory() as training_dir:
        os.environ["PROPENSITY_TRAINING_DIR"] = training_dir  # where trials find the encoder
        started = time.perf_counter()
        encoder = pretrain_encoder(data, size.pretrain, device)
        save_encoder(encoder, Path(training_dir) / "behaviour_encoder.pt", {"bench": "seq_study"})
        seconds["pretraining"] = round(time.perf_counter() - started, 1)
        print(f"pretraining: {encoder.history[-1]}", flush=True)

        started = time.perf_counter()
        study, best, trials = run_study(data, size, device, args.seed)
        seconds["study"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    scoring = score_on_device_and_cpu(best, data, device, size.cpu_check_rows)
    seconds["scoring"] = round(time.perf_counter() - started, 1)
    states = [trial.state for trial in study.trials]
    checks = {
        f"device scores equal the CPU's within {args.tolerance:g} "
        f"(largest difference {scoring['max_probability_difference_device_vs_cpu']:.2e})": (
            scoring["max_probability_difference_device_vs_cpu"] <= args.tolerance
        ),
        "both pretrained and from-scratch trials ran": {t["pretrained"] for t in trials}
        == {True, False},
        "the study found the signal (promotion PR-AUC at least twice the buyer rate)": (
            scoring["promotion_pr_auc"] >= 2 * scoring["buyer_rate"]
        ),
    }
    report = {
        "benchmark": "the sequence family's study end to end (bench/seq_study.py)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(["torch", "numpy", "optuna"], "ml"),
        "device": str(device),
        "gpu": gpu,
        "compiled": compile_requested(),
        "data": (
            f"synthetic (ml.synthetic_split): {train_rows:,} training rows, {eval_rows:,} "
            f"validation and {eval_rows:,} promotion rows, 0 to 30 events each"
        ),
        "seconds": seconds,
        "pretraining": {
            **encoder.history[-1],
            "rows": encoder.train_rows,
            "seconds": round(encoder.seconds, 1),
        },
        "trials": trials,
        "trials_complete": states.count(optuna.trial.TrialState.COMPLETE),
        "trials_pruned": states.count(optuna.trial.TrialState.PRUNED),
        "best_trial": study.best_trial.number,
        "scoring": scoring,
        "peak_gpu_memory_mb": (
            round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else "-"
        ),
        "checks": checks,
    }
    name = args.name or f"seq_study_{device.type}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.results_dir / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
