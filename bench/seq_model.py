"""Benchmark of the PyTorch sequence model: training and inference sequences per second.

For each device (the CPU always; CUDA with bf16 autocast and TF32 whenever torch sees a GPU),
each encoder (``--encoders``, default GRU and Transformer) and each batch size (``--batch-sizes``,
default 256, 512, 1024, 2048, 4096) it measures, with the project's own code
(``ml.families.torch_seq``):

- **training**: ``train_epoch`` (forward, BCE with logits, backward, gradient clipping, AdamW
  step), one full batch per step through ``make_loader`` (pinned memory on CUDA), after two
  warm-up steps; at least ``--min-steps`` steps and ``--min-seconds`` seconds;
- **inference**: ``predict_logits`` (eval mode, ``torch.inference_mode``, batches cut to their
  longest sequence) over ``--infer-sequences`` sequences, repeated until ``--min-seconds``;
- on CUDA, the peak GPU memory of each measurement (``torch.cuda.max_memory_allocated``).

It also times ``pad_sequences`` + ``build_tensors`` (``ml.families.torch_seq.inputs``; the
one-off conversion of a split into tensors) on the CPU.

Data: synthetic, so no warehouse is needed. ``--rows`` (default 65,536) sequences whose
lengths are drawn uniformly from 1..``--max-length`` (default 50, the warehouse's
``sequence_length``; mean about 25, and every batch of 256+ holds a full-length one, so batches
are padded to 50), event codes 1..5, category indexes up to 5,000 (hashed into 1,024 buckets),
log-normal prices with 5 % missing, increasing seconds before the cutoff; ``--static-features``
(default 40) standard-normal static features with 10 % NaN; 3 % positives. The model is
``SeqParams`` with ``--hidden`` (64), ``--layers`` (1) and defaults otherwise.

Writes ``bench/results/seq_model.json`` (everything, with the machine) and
``bench/results/seq_model.md`` (tables). Usage::

    .venv/bin/python bench/seq_model.py                       # about 3 minutes on 2 CPU cores
    .venv/bin/python bench/seq_model.py --threads 1 --encoders gru --batch-sizes 1024

Figures are wall-clock: run it on an otherwise idle machine. Each measurement records how many
cores other processes kept busy meanwhile (see ``bench.train_xgb.Meter``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # so `ml` imports when run as a plain script

from bench.machine import machine_info  # noqa: E402
from bench.train_xgb import SHARED_MACHINE_CORES, Meter  # noqa: E402
from ml.families.torch_seq.inputs import (  # noqa: E402
    FeatureScaler,
    SequenceTensors,
    build_tensors,
    make_loader,
)
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet  # noqa: E402
from ml.families.torch_seq.train import configure_device, predict_logits, train_epoch  # noqa: E402

DEFAULT_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
MEASURED_PACKAGES = ("torch", "numpy", "mlflow", "optuna")
POSITIVE_RATE = 0.03


def synthetic_inputs(
    rows: int, max_length: int, n_static: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Static features, SEQUENCE_COLUMNS shaped like marts.user_sequences, and labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, rows)
    total = int(lengths.sum())
    split_at = np.cumsum(lengths)[:-1]
    # Seconds before the cutoff fall from the oldest event to the newest within a row.
    seconds = rng.exponential(3_600.0 * 24, total)
    seconds = np.concatenate([np.sort(part)[::-1] for part in np.split(seconds, split_at)])
    prices = np.where(rng.random(total) < 0.05, np.nan, rng.lognormal(3.0, 1.0, total))
    sequences = pd.DataFrame(
        {
            "event_type_codes": np.split(rng.integers(1, 6, total).astype(np.uint8), split_at),
            "category_indexes": np.split(rng.integers(0, 5_000, total).astype(np.int32), split_at),
            "prices": np.split(prices, split_at),
            "seconds_before_cutoff": np.split(seconds, split_at),
        }
    )
    static = rng.normal(size=(rows, n_static))
    static[rng.random(static.shape) < 0.1] = np.nan
    features = pd.DataFrame(static, columns=[f"feature_{i}" for i in range(n_static)])
    labels = (rng.random(rows) < POSITIVE_RATE).astype(np.int64)
    return features, sequences, labels


def timed_until(
    step: Callable[[], int], min_steps: int, min_seconds: float, device: torch.device
) -> tuple[int, Meter]:
    """Calls `step` (returns the sequences it processed) until both minimums are reached."""
    done = steps = 0
    with Meter() as meter:
        started = time.perf_counter()
        while steps < min_steps or time.perf_counter() - started < min_seconds:
            done += step()
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done, meter


def subset(tensors: SequenceTensors, n: int) -> SequenceTensors:
    return subset_at(tensors, 0, n)


def subset_at(tensors: SequenceTensors, start: int, n: int) -> SequenceTensors:
    return SequenceTensors(*(t[start : start + n] for t in tensors.as_tuple()))


def measure(
    tensors: SequenceTensors,
    params: SeqParams,
    device: torch.device,
    batch_size: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Training and inference throughput of one (device, encoder, batch size)."""
    torch.manual_seed(args.seed)
    net = SequencePropensityNet(tensors.static.shape[1], params).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=params.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(10.0, device=device))

    batches = [
        subset_at(tensors, start, batch_size) for start in range(0, len(tensors), batch_size)
    ]
    batches = [b for b in batches if len(b) == batch_size]

    next_batch = itertools.cycle(batches)

    def train_step() -> int:
        """One optimizer step on the next full batch (through make_loader, as in training)."""
        rows = next(next_batch)
        loader = make_loader(rows, batch_size, device, shuffle_seed=args.seed)
        train_epoch(net, loader, optimizer, loss_fn, device, params.grad_clip)
        return len(rows)

    for _ in range(2):  # warm-up: allocator, kernels, the optimizer's state
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trained, train_meter = timed_until(train_step, args.min_steps, args.min_seconds, device)
    train_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    inference_rows = subset(tensors, args.infer_sequences)
    predict_logits(net, subset(tensors, batch_size), batch_size, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    inferred, infer_meter = timed_until(
        lambda: len(predict_logits(net, inference_rows, batch_size, device)),
        1,
        args.min_seconds,
        device,
    )
    infer_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "device": device.type,
        "precision": "bf16 autocast + TF32" if device.type == "cuda" else "float32",
        "encoder": params.encoder,
        "batch_size": batch_size,
        "train_sequences": trained,
        "train_seconds": round(train_meter.seconds, 3),
        "train_sequences_per_second": round(trained / train_meter.seconds),
        "train_other_busy_cores": train_meter.other_busy_cores,
        "train_peak_gpu_memory_mb": None if train_peak is None else round(train_peak / 2**20),
        "inference_sequences": inferred,
        "inference_seconds": round(infer_meter.seconds, 3),
        "inference_sequences_per_second": round(inferred / infer_meter.seconds),
        "inference_other_busy_cores": infer_meter.other_busy_cores,
        "inference_peak_gpu_memory_mb": None if infer_peak is None else round(infer_peak / 2**20),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument(
        "--encoders", nargs="+", choices=["gru", "transformer"], default=["gru", "transformer"]
    )
    parser.add_argument("--rows", type=int, default=65_536, help="synthetic sequences")
    parser.add_argument(
        "--infer-sequences", type=int, default=16_384, help="sequences per timed inference pass"
    )
    parser.add_argument("--max-length", type=int, default=50, help="longest sequence kept")
    parser.add_argument("--static-features", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64, help="hidden_size")
    parser.add_argument("--layers", type=int, default=1, help="num_layers")
    parser.add_argument("--min-steps", type=int, default=3, help="timed training steps at least")
    parser.add_argument(
        "--min-seconds", type=float, default=4.0, help="seconds each measurement runs at least"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default, one per core)",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cpu, and cuda when available",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--name", default="seq_model", help="file name of the results")
    args = parser.parse_args(argv)
    if max(args.batch_sizes) > args.rows or args.infer_sequences > args.rows:
        parser.error("--rows must be at least the largest batch and --infer-sequences")
    return args


def write_results(report: dict[str, Any], args: argparse.Namespace) -> None:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{args.name}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    machine, setup = report["machine"], report["setup"]
    free_cores = max(0, machine["cores"] - setup["cpu_threads"])
    lines = [
        "# Sequence model benchmark",
        "",
        f"{report['date']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM "
        f"({machine['cpu']}); torch {machine['versions']['torch']}, {setup['cpu_threads']} CPU "
        f"thread(s). GPU: {report['gpu']}",
        "",
        f"Data: {report['data']}",
        "",
        f"Model: {setup['model']}",
        "",
        f"Tensor building (`build_tensors`: pad_sequences + feature scaling, CPU): "
        f"{report['build_tensors']['sequences_per_second']:,} sequences/s "
        f"({report['build_tensors']['rows']:,} rows in {report['build_tensors']['seconds']} s).",
        "",
        "*Other busy cores*: CPU time other processes used meanwhile per wall second. Where it "
        f"is above the cores this run left free ({free_cores}) plus {SHARED_MACHINE_CORES}, "
        "other processes took cores from this one and the figure is lower than the machine "
        "can do.",
        "",
    ]
    measurements = [
        value
        for r in report["results"]
        for value in (r["train_other_busy_cores"], r["inference_other_busy_cores"])
    ]
    limit = free_cores + SHARED_MACHINE_CORES
    shared = [value for value in measurements if (value or 0) > limit]
    if shared:
        lines += [
            f"**{len(shared)} of {len(measurements)} measurements ran while other processes used "
            f"more than {limit:g} cores: their figures are too low.**",
            "",
        ]
    lines += [
        "| device | precision | encoder | batch | train seq/s | inference seq/s | peak GPU MB "
        "(train / inference) | other busy cores (train / inference) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        peak = (
            "-"
            if r["train_peak_gpu_memory_mb"] is None
            else f"{r['train_peak_gpu_memory_mb']:,} / {r['inference_peak_gpu_memory_mb']:,}"
        )
        lines.append(
            f"| {r['device']} | {r['precision']} | {r['encoder']} | {r['batch_size']:,} "
            f"| {r['train_sequences_per_second']:,} | {r['inference_sequences_per_second']:,} "
            f"| {peak} | {r['train_other_busy_cores']} / {r['inference_other_busy_cores']} |"
        )
    (args.results_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {json_path} and {args.name}.md")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    devices = args.devices or (["cpu", "cuda"] if cuda else ["cpu"])
    if "cuda" in devices and not cuda:
        raise SystemExit("--devices cuda given, but torch sees no CUDA GPU")
    gpu = (
        f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        if cuda
        else "none: torch.cuda.is_available() is False here, so only CPU figures"
    )
    print(f"GPU: {gpu}; CPU threads: {torch.get_num_threads()}")

    features, sequences, labels = synthetic_inputs(
        args.rows, args.max_length, args.static_features, args.seed
    )
    base = SeqParams(hidden_size=args.hidden, num_layers=args.layers, max_length=args.max_length)
    scaler = FeatureScaler.fit(features)
    with Meter() as meter:
        tensors = build_tensors(scaler, base, features, sequences, labels)
    build = {
        "rows": args.rows,
        "seconds": round(meter.seconds, 3),
        "sequences_per_second": round(args.rows / meter.seconds),
    }
    print(f"build_tensors: {build['sequences_per_second']:,} sequences/s")
    mean_length = float(tensors.lengths.float().mean())

    results = []
    for device_name in devices:
        device = torch.device(device_name)
        configure_device(device)
        for encoder in args.encoders:
            params = SeqParams(**{**base.to_dict(), "encoder": encoder})
            for batch_size in args.batch_sizes:
                result = measure(tensors, params, device, batch_size, args)
                results.append(result)
                peak = (
                    ""
                    if result["train_peak_gpu_memory_mb"] is None
                    else f", peak GPU {result['train_peak_gpu_memory_mb']:,} MB train / "
                    f"{result['inference_peak_gpu_memory_mb']:,} MB inference"
                )
                print(
                    f"{device_name} {encoder} batch {batch_size:>5}: train "
                    f"{result['train_sequences_per_second']:>8,} seq/s, inference "
                    f"{result['inference_sequences_per_second']:>8,} seq/s{peak} (other busy "
                    f"cores {result['train_other_busy_cores']} / "
                    f"{result['inference_other_busy_cores']})"
                )

    report = {
        "benchmark": "sequence model training (ml.families.torch_seq.train.train_epoch) and "
        "inference (ml.families.torch_seq.train.predict_logits) throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(MEASURED_PACKAGES, "ml"),
        "gpu": gpu,
        "data": (
            f"synthetic: {args.rows:,} sequences, lengths uniform in 1..{args.max_length} (mean "
            f"{mean_length:.1f}; batches padded to their longest, i.e. {args.max_length}), "
            f"{args.static_features} static features, {POSITIVE_RATE:.0%} positives"
        ),
        "setup": {
            "cpu_threads": torch.get_num_threads(),
            "model": (
                f"hidden_size {args.hidden}, {args.layers} layer(s), embedding_dim "
                f"{base.embedding_dim}, category_buckets {base.category_buckets}, max_length "
                f"{args.max_length}, AdamW, gradient clipping {base.grad_clip}"
            ),
            "min_seconds": args.min_seconds,
            "min_steps": args.min_steps,
            "inference_sequences": args.infer_sequences,
        },
        "build_tensors": build,
        "results": results,
    }
    write_results(report, args)
    return report


if __name__ == "__main__":
    main()
