"""The scripts a GPU machine runs in one call (bench/seq_study.py, bench/seq_model.py) run here
on the CPU at a small size, and need no more than that machine has (torch, numpy, pandas,
scikit-learn, pyarrow) plus the wheels bench/gpu_wheels.sh fetches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROPENSITY_TORCH_DEVICE": "cpu", "PROPENSITY_HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )


def test_the_whole_sequence_study_runs_end_to_end_and_checks_itself(tmp_path: Path) -> None:
    result = run(
        [
            "bench/seq_study.py",
            "--train-rows",
            "3000",
            "--trials",
            "2",
            "--results-dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "seq_study_cpu.json").read_text())
    assert report["device"] == "cpu"
    assert len(report["checks"]) == 3 and all(report["checks"].values())
    assert {trial["pretrained"] for trial in report["trials"]} == {True, False}
    assert report["scoring"]["max_probability_difference_device_vs_cpu"] == 0.0
    assert "| trial | start |" in (tmp_path / "seq_study_cpu.md").read_text()


def test_the_throughput_benchmark_runs(tmp_path: Path) -> None:
    result = run(
        [
            "bench/seq_model.py",
            "--rows",
            "2048",
            "--batch-sizes",
            "256",
            "--encoders",
            "gru",
            "--min-seconds",
            "0.2",
            "--min-steps",
            "1",
            "--infer-sequences",
            "512",
            "--results-dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "seq_model.json").read_text())
    (measurement,) = report["results"]
    assert measurement["train_sequences_per_second"] > 0
    assert measurement["inference_sequences_per_second"] > 0


def test_training_imports_neither_mlflow_nor_matplotlib(tmp_path: Path) -> None:
    """The GPU machine has no MLflow: the training path must not need it."""
    code = (
        "import sys; import ml.families.torch_seq.train, ml.families.torch_seq.search, "
        "ml.families.torch_seq.pretrain, ml.synthetic_split, ml.families.torch_seq; "
        "print(sorted(m for m in ('mlflow', 'matplotlib', 'xgboost', 'dagster') "
        "if m in sys.modules))"
    )
    result = run(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
