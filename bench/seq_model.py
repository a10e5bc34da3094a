"""Benchmark of the PyTorch sequence model: training and inference sequences per second.

For each device (the CPU always; CUDA whenever torch sees a GPU: the GRU and the head in
float32, the rest under bf16 autocast, TF32 matmuls), each encoder (``--encoders``, default GRU
and Transformer), each batch size (``--batch-sizes``; defaults per device, see CPU_DEFAULTS and
CUDA_DEFAULTS) and, with ``--compile both``, eager and ``torch.compile``d, it measures with the
project's own code (``ml.families.torch_seq``):

- **training**: ``train_epoch`` (forward, BCE with logits, backward, gradient clipping, AdamW
  step) over batches from ``make_loader`` exactly as training gets them: the data moved to the
  device once, batches gathered there, bucketed by length and cut to their longest sequence;
  STEPS_PER_CALL steps per timed call (one host sync each, as once per epoch in training), after
  a warm-up (a whole pass when compiled, so that every batch width is compiled first); at least
  ``--min-steps`` calls and ``--min-seconds`` seconds;
- **inference**: ``predict_logits`` (eval mode, ``torch.inference_mode``, the batch size scoring
  uses on that device, ``inference_batch_size``) over ``--infer-sequences`` sequences, repeated
  until ``--min-seconds``;
- on CUDA, the peak GPU memory of each measurement (``torch.cuda.max_memory_allocated``) and
  the issue's goals (GPU_GOALS) beside the best figures.

It also times ``pad_sequences`` + ``build_tensors`` (``ml.families.torch_seq.inputs``; the
one-off conversion of a split into tensors) on the CPU.

Data: synthetic, so no warehouse is needed. ``--rows`` sequences whose lengths are drawn
uniformly from 1..``--max-length`` (default 50, the warehouse's ``sequence_length``; mean about
25), or all of length 50 with ``--full-length``, event codes 1..5, category indexes up to 5,000
(hashed into 1,024 buckets), log-normal prices with 5 % missing, increasing seconds before the
cutoff; ``--static-features`` (default 40) standard-normal static features with 10 % NaN; 3 %
positives. The model is ``SeqParams`` with ``--hidden`` (64), ``--layers`` (1) and defaults
otherwise.

Writes ``bench/results/<name>.json`` (everything, with the machine) and
``bench/results/<name>.md`` (tables). Usage::

    .venv/bin/python bench/seq_model.py                       # about 3 minutes on 2 CPU cores
    .venv/bin/python bench/seq_model.py --threads 1 --encoders gru --batch-sizes 1024
    .venv/bin/python bench/seq_model.py --encoders gru --batch-sizes 1024 --compile both \\
        --name seq_model_compile                              # what torch.compile gains here
    python3 bench/seq_model.py --devices cuda --full-length --compile both   # on a GPU machine

Figures are wall-clock: run it on an otherwise idle machine. Each measurement records how many
cores other processes kept busy meanwhile (see ``bench.machine.Meter``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # so `ml` imports when run as a plain script

from bench.machine import SHARED_MACHINE_CORES, Meter, machine_info  # noqa: E402
from ml.families.torch_seq.inputs import (  # noqa: E402
    WIDTH_STEP,
    FeatureScaler,
    SequenceTensors,
    build_tensors,
    make_loader,
)
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet  # noqa: E402
from ml.families.torch_seq.train import (  # noqa: E402
    configure_device,
    inference_batch_size,
    predict_logits,
    train_epoch,
)

DEFAULT_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
MEASURED_PACKAGES = ("torch", "numpy", "mlflow", "optuna")
POSITIVE_RATE = 0.03
# Optimizer steps per timed call: one host sync (the epoch loss) per call, as per epoch in training.
STEPS_PER_CALL = 8
# Defaults per device: what a 2-core CPU gets through in minutes, and what fills a large GPU.
CPU_DEFAULTS = {"rows": 65_536, "batch_sizes": [256, 512, 1024, 2048, 4096]}
CUDA_DEFAULTS = {"rows": 1_048_576, "batch_sizes": [1024, 4096, 16_384, 65_536]}
# The goals on one H100/H200-class GPU at length 50.
GPU_GOALS = {"train_sequences_per_second": 500_000, "inference_sequences_per_second": 5_000_000}


def synthetic_inputs(
    rows: int, max_length: int, n_static: int, seed: int, full_length: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Static features, SEQUENCE_COLUMNS shaped like marts.user_sequences, and labels; every
    sequence `max_length` events long with `full_length`, else lengths uniform in 1..max_length."""
    rng = np.random.default_rng(seed)
    lengths = np.full(rows, max_length) if full_length else rng.integers(1, max_length + 1, rows)
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
    compile_net: bool = False,
) -> dict[str, Any]:
    """Training and inference throughput of one (device, encoder, batch size, compiled or not),
    as training runs: the data moved to the device once, batches gathered and bucketed there
    (``make_loader``), one host sync per timed call of STEPS_PER_CALL steps."""
    torch.manual_seed(args.seed)
    net = SequencePropensityNet(tensors.static.shape[1], params).to(device)
    step_net = torch.compile(net) if compile_net else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=params.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(10.0, device=device))
    on_device = tensors.to(device)
    stream = _endless(make_loader(on_device, batch_size, device, shuffle_seed=args.seed))

    def train_step() -> int:
        """STEPS_PER_CALL optimizer steps on the next batches, then one sync (the loss)."""
        batches = list(itertools.islice(stream, STEPS_PER_CALL))
        train_epoch(step_net, batches, optimizer, loss_fn, device, params.grad_clip)
        return sum(len(batch[3]) for batch in batches)

    # Warm-up: allocator, kernels, the optimizer's state; compilation of every batch width.
    warm_up_calls = math.ceil(len(tensors) / batch_size / STEPS_PER_CALL) if compile_net else 1
    for _ in range(warm_up_calls):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trained, train_meter = timed_until(train_step, args.min_steps, args.min_seconds, device)
    train_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    default_inference_rows = len(tensors) if device.type == "cuda" else 16_384
    inference_rows = subset(on_device, args.infer_sequences or default_inference_rows)
    inference_batch = max(batch_size, args.inference_batch or inference_batch_size(device, 0))
    predict_logits(step_net, inference_rows, inference_batch, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    inferred, infer_meter = timed_until(
        lambda: len(predict_logits(step_net, inference_rows, inference_batch, device)),
        1,
        args.min_seconds,
        device,
    )
    infer_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "device": device.type,
        "precision": (
            "GRU and head float32, rest bf16 autocast, TF32" if device.type == "cuda" else "float32"
        ),
        "compiled": compile_net,
        "encoder": params.encoder,
        "batch_size": batch_size,
        "inference_batch_size": inference_batch,
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


def _endless(loader: Iterable[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
    while True:
        yield from loader


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help=f"default: {CPU_DEFAULTS['batch_sizes']} on the CPU, "
        f"{CUDA_DEFAULTS['batch_sizes']} on CUDA",
    )
    parser.add_argument(
        "--encoders", nargs="+", choices=["gru", "transformer"], default=["gru", "transformer"]
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"synthetic sequences (default {CPU_DEFAULTS['rows']:,}, or "
        f"{CUDA_DEFAULTS['rows']:,} when CUDA is measured)",
    )
    parser.add_argument(
        "--full-length",
        action="store_true",
        help="every sequence --max-length events long (default: lengths uniform in 1..max)",
    )
    parser.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default="off",
        help="torch.compile the network (both: measure each configuration eager and compiled)",
    )
    parser.add_argument(
        "--inference-batch",
        type=int,
        default=0,
        help="rows per inference batch (default: what scoring uses, "
        "ml.families.torch_seq.train.inference_batch_size)",
    )
    parser.add_argument(
        "--infer-sequences",
        type=int,
        default=0,
        help="sequences per timed inference pass (default 16,384 on the CPU, --rows on CUDA)",
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
    measures_cuda = torch.cuda.is_available() and "cuda" in (args.devices or ["cuda"])
    args.rows = args.rows or (CUDA_DEFAULTS if measures_cuda else CPU_DEFAULTS)["rows"]
    largest_batch = max(args.batch_sizes or [0])
    if largest_batch > args.rows or (args.infer_sequences or 0) > args.rows:
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
    cuda_results = [r for r in report["results"] if r["device"] == "cuda"]
    if cuda_results:
        best_train = max(r["train_sequences_per_second"] for r in cuda_results)
        best_inference = max(r["inference_sequences_per_second"] for r in cuda_results)
        lines += [
            f"Goals on one H100/H200-class GPU: training "
            f"{GPU_GOALS['train_sequences_per_second']:,} sequences/s (reached {best_train:,}), "
            f"inference {GPU_GOALS['inference_sequences_per_second']:,} sequences/s (reached "
            f"{best_inference:,}).",
            "",
        ]
    lines += [
        "| device | precision | encoder | compiled | batch (train / inference) | train seq/s "
        "| inference seq/s | peak GPU MB (train / inference) | other busy cores "
        "(train / inference) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        peak = (
            "-"
            if r["train_peak_gpu_memory_mb"] is None
            else f"{r['train_peak_gpu_memory_mb']:,} / {r['inference_peak_gpu_memory_mb']:,}"
        )
        lines.append(
            f"| {r['device']} | {r['precision']} | {r['encoder']} "
            f"| {'yes' if r['compiled'] else 'no'} "
            f"| {r['batch_size']:,} / {r['inference_batch_size']:,} "
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
        args.rows, args.max_length, args.static_features, args.seed, args.full_length
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
        defaults = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
        compile_choices = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        for encoder, batch_size, compile_net in itertools.product(
            args.encoders, args.batch_sizes or defaults["batch_sizes"], compile_choices
        ):
            params = SeqParams(**{**base.to_dict(), "encoder": encoder})
            result = measure(tensors, params, device, batch_size, args, compile_net)
            results.append(result)
            peak = (
                ""
                if result["train_peak_gpu_memory_mb"] is None
                else f", peak GPU {result['train_peak_gpu_memory_mb']:,} MB train / "
                f"{result['inference_peak_gpu_memory_mb']:,} MB inference"
            )
            print(
                f"{device_name} {encoder}{' compiled' if compile_net else ''} batch "
                f"{batch_size:>5}: train "
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
            f"synthetic: {args.rows:,} sequences, "
            + (
                f"every one {args.max_length} events long"
                if args.full_length
                else f"lengths uniform in 1..{args.max_length} (mean {mean_length:.1f}; "
                "training batches are bucketed by length and cut to their longest, rounded up "
                f"to {WIDTH_STEP})"
            )
            + f", {args.static_features} static features, {POSITIVE_RATE:.0%} positives"
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
