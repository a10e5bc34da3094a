"""Benchmark of XGBoost training and Optuna tuning on feature-shaped data.

Two measurements:

1. **Fit time.** ``train_xgb`` (``ml.families.xgboost.model``) on ``--rows`` training rows
   (default 250k, 1M, 2M) for a fixed number of boosting rounds (``--rounds``, default 200: early
   stopping is set beyond the round budget so it never stops a fit), typical parameters
   (max_depth 6, eta 0.1, hist trees), evaluated on ``--fit-validation-rows`` validation rows
   every round as the pipeline does. On the CPU always, and on CUDA too when ``xgb_device()``
   says "cuda". Reports seconds, CPU seconds of this process, seconds per million rows and rows
   per second. The time includes the DMatrix construction inside ``train_xgb``; that part is also
   timed on its own.

2. **Optuna trials per minute with and without pruning.** ``ml.study.tune`` with the XGBoost
   family on a ``SplitData`` of ``--tune-train-rows`` / ``--tune-validation-rows`` rows,
   ``--trials`` trials each with ``TuningConfig(pruning=True)`` and ``pruning=False``, the same
   sampler seed, a fresh journal storage in a temporary folder and an MLflow tracking store
   (sqlite) in that folder, so nothing lands in the repository. Each study runs inside a parent
   MLflow run; ``tune_xgb`` adds one nested run per trial. Reports trials per minute, pruned and
   complete counts, the best validation PR-AUC and whether pruning=False really reported no
   intermediate values.

The rows come from the real feature warehouse when there is one (``--warehouse``, default the
project's ``.local/warehouse.duckdb``): the features and labels of ``marts.user_features`` /
``marts.labels`` with a complete horizon, resampled with replacement to the wanted sizes with
multiplicative noise (integer-valued columns stay integers, NaN stays NaN). Validation rows are
drawn from the latest cutoffs and training rows from the earlier ones. Without a warehouse (or
with ``--source synthetic``) the script generates synthetic features with numpy: about 40 columns
of counts, recencies with NaN, ratios and prices, a learnable signal and a ~3 % positive rate.
The output says which source was used.

It prints the figures and writes ``bench/results/train_xgb.json`` (everything, including the
machine and the versions) and ``bench/results/train_xgb.md`` (short tables).

Usage::

    .venv/bin/python bench/train_xgb.py                  # defaults: ~4.5 min on 2 idle cores
    .venv/bin/python bench/train_xgb.py --tune-rounds 1000 --tune-early-stopping 50  # as tuned
    .venv/bin/python bench/train_xgb.py --skip-tuning --rows 4000000 --source synthetic

The tuning defaults (300 rounds, early stopping after 30) are below the pipeline's
``TuningConfig`` (1000 and 50) to keep the run short; the best trials then stop at the round cap.

Run it on an otherwise idle machine: the figures are wall-clock times. For every measurement the
script records how many cores other processes kept busy meanwhile, so that a shared machine shows.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import xgboost as xgb
from optuna.trial import FrozenTrial, TrialState

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # so `ml` imports when run as a plain script

from bench.machine import SHARED_MACHINE_CORES, Meter, machine_info  # noqa: E402
from ml import settings  # noqa: E402
from ml.dataset import KEY_COLUMNS, LABEL_COLUMN, load_labeled_features  # noqa: E402
from ml.families.xgboost import FAMILY as XGBOOST  # noqa: E402
from ml.families.xgboost.model import to_dmatrix, train_xgb, xgb_device  # noqa: E402
from ml.families.xgboost.search import XGBoostSearch  # noqa: E402
from ml.splits import SplitData, TimeSplit  # noqa: E402
from ml.study import StudyBudget, TuningResult, optuna_storage, tune  # noqa: E402

DEFAULT_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
MILLION = 1_000_000
# Share of the warehouse's (complete-horizon) rows, by latest cutoffs, that validation draws from.
VALIDATION_SHARE = 0.2
SYNTHETIC_POSITIVE_RATE = 0.03
SYNTHETIC_BASE_ROWS = 200_000


# ----------------------------------------------------------------------------- data


@dataclass
class FeaturePool:
    """Base rows to resample from: features (float64, NaN for missing) and 0/1 labels."""

    X: pd.DataFrame
    y: np.ndarray
    integer_columns: np.ndarray  # bool per column: every value is a whole number


@dataclass
class DataSource:
    """Where the rows come from, and the two pools training and validation rows are drawn from."""

    kind: str  # "warehouse" or "synthetic"
    description: str
    train_pool: FeaturePool
    validation_pool: FeaturePool
    fallback_reason: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.description,
            "fallback_reason": self.fallback_reason,
            "features": int(self.train_pool.X.shape[1]),
            "train_pool_rows": int(len(self.train_pool.y)),
            "train_pool_positive_rate": round(float(np.mean(self.train_pool.y)), 4),
            "validation_pool_rows": int(len(self.validation_pool.y)),
            "validation_pool_positive_rate": round(float(np.mean(self.validation_pool.y)), 4),
            "missing_share": round(float(self.train_pool.X.isna().to_numpy().mean()), 4),
        }


def make_pool(X: pd.DataFrame, y: np.ndarray) -> FeaturePool:
    values = X.to_numpy(dtype=np.float64)
    integral = np.where(np.isnan(values), 0.0, values)
    integer_columns = np.all(integral == np.round(integral), axis=0)
    return FeaturePool(X.reset_index(drop=True), np.asarray(y, dtype=np.int64), integer_columns)


def warehouse_source(warehouse: Path) -> DataSource:
    """The warehouse's labeled features with a complete horizon, split by cutoff time."""
    data = load_labeled_features(warehouse)
    frame = data.frame[data.frame["horizon_complete"]]
    if frame.empty or frame[LABEL_COLUMN].nunique() < 2:
        raise ValueError("the warehouse has no complete-horizon rows with both labels")
    cutoffs = np.sort(frame["cutoff_time"].unique())
    if len(cutoffs) < 2:
        raise ValueError("the warehouse has fewer than 2 complete cutoffs")
    # Validation draws from the latest cutoffs holding about VALIDATION_SHARE of the rows.
    rows_per_cutoff = frame.groupby("cutoff_time").size().reindex(cutoffs).to_numpy()
    from_the_end = np.cumsum(rows_per_cutoff[::-1])
    n_validation_cutoffs = int(np.searchsorted(from_the_end, VALIDATION_SHARE * len(frame)) + 1)
    n_validation_cutoffs = min(n_validation_cutoffs, len(cutoffs) - 1)
    first_validation = cutoffs[-n_validation_cutoffs]
    is_validation = (frame["cutoff_time"] >= first_validation).to_numpy()
    columns = data.feature_columns
    labels = frame[LABEL_COLUMN].to_numpy()
    description = (
        f"{warehouse}: marts.user_features joined to marts.labels, {len(frame):,} rows with a "
        f"complete horizon over {len(cutoffs)} cutoffs ({pd.Timestamp(cutoffs[0]).date()} .. "
        f"{pd.Timestamp(cutoffs[-1]).date()}); validation rows drawn from the last "
        f"{n_validation_cutoffs} cutoffs, training rows from the earlier ones; resampled with "
        "replacement and multiplicative noise to reach each size"
    )
    return DataSource(
        kind="warehouse",
        description=description,
        train_pool=make_pool(frame.loc[~is_validation, columns], labels[~is_validation]),
        validation_pool=make_pool(frame.loc[is_validation, columns], labels[is_validation]),
    )


def synthetic_features(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature-shaped synthetic rows: 40 columns like marts.user_features, ~3 % positives.

    A latent per-row intent drives activity counts, cart recency and the purchase label, so the
    label is learnable from the features but not perfectly.
    """
    intent = rng.normal(size=n)
    activity = rng.gamma(shape=1.5, scale=1.0, size=n)
    columns: dict[str, np.ndarray] = {}
    windows = {"1d": 0.15, "7d": 1.0, "30d": 3.5}
    for window, scale in windows.items():
        views = rng.poisson(activity * scale * 8)
        carts = rng.poisson(activity * scale * 0.4 * np.exp(0.8 * intent))
        columns[f"views_{window}"] = views
        columns[f"carts_{window}"] = carts
        columns[f"removes_{window}"] = rng.binomial(carts, 0.3)
        columns[f"purchases_{window}"] = rng.poisson(activity * scale * 0.03 * np.exp(intent))
        columns[f"wishlists_{window}"] = rng.poisson(activity * scale * 0.05)
        columns[f"sessions_{window}"] = rng.poisson(activity * scale * 1.5) + (views > 0)
        columns[f"events_{window}"] = views + carts + columns[f"removes_{window}"]
    columns["distinct_products_30d"] = rng.binomial(columns["views_30d"], 0.7)
    columns["distinct_categories_30d"] = rng.binomial(columns["distinct_products_30d"], 0.4)
    columns["distinct_brands_30d"] = rng.binomial(columns["distinct_products_30d"], 0.5)
    columns["active_days_30d"] = np.minimum(30, rng.poisson(activity * 4))
    columns["events_previous_7d"] = rng.poisson(activity * 9)
    as_float = {name: values.astype(np.float64) for name, values in columns.items()}
    hours_since_event = rng.exponential(48 / (1 + activity))
    # Recencies are NaN for users who never carted / purchased, as in the warehouse.
    hours_since_cart = rng.exponential(200 * np.exp(-0.7 * intent))
    hours_since_cart[as_float["carts_30d"] == 0] = np.nan
    hours_since_purchase = rng.exponential(400.0, size=n)
    hours_since_purchase[as_float["purchases_30d"] == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        view_to_cart = as_float["carts_30d"] / np.maximum(as_float["views_30d"], 1)
        cart_to_purchase = as_float["purchases_30d"] / np.maximum(as_float["carts_30d"], 1)
        abandonment = np.where(as_float["carts_30d"] > 0, 1 - cart_to_purchase, np.nan)
    price = rng.lognormal(3.5, 1.0, size=n)
    cart_price = np.where(as_float["carts_30d"] > 0, price * rng.lognormal(0, 0.3, size=n), np.nan)
    trend = (as_float["events_7d"] - as_float["events_previous_7d"]) / (
        1 + as_float["events_previous_7d"]
    )
    as_float |= {
        "hours_since_last_event": hours_since_event,
        "hours_since_last_cart": hours_since_cart,
        "hours_since_last_purchase": hours_since_purchase,
        "view_to_cart_ratio": view_to_cart,
        "cart_to_purchase_ratio": cart_to_purchase,
        "cart_abandonment_rate": abandonment,
        "avg_view_price": price,
        "avg_cart_price": cart_price,
        "avg_session_seconds": rng.lognormal(5.5, 0.8, size=n),
        "avg_session_events": as_float["events_30d"] / np.maximum(as_float["sessions_30d"], 1),
        "activity_trend_7d": trend,
    }
    X = pd.DataFrame(as_float)
    logit = 1.6 * intent + 0.4 * np.log1p(as_float["carts_7d"]) + 0.3 * np.log1p(activity)
    # The intercept that gives about SYNTHETIC_POSITIVE_RATE positives (bisection on the mean).
    low, high = -20.0, 10.0
    for _ in range(50):
        middle = (low + high) / 2
        rate = np.mean(1 / (1 + np.exp(-(logit + middle))))
        low, high = (middle, high) if rate < SYNTHETIC_POSITIVE_RATE else (low, middle)
    y = (rng.random(n) < 1 / (1 + np.exp(-(logit + low)))).astype(np.int64)
    return X, y


def synthetic_source(seed: int, reason: str = "") -> DataSource:
    rng = np.random.default_rng(seed)
    X_train, y_train = synthetic_features(SYNTHETIC_BASE_ROWS, rng)
    X_validation, y_validation = synthetic_features(SYNTHETIC_BASE_ROWS // 4, rng)
    description = (
        f"synthetic numpy features ({X_train.shape[1]} columns: counts, recencies with NaN, "
        f"ratios, prices; a latent intent drives the label, ~{SYNTHETIC_POSITIVE_RATE:.0%} "
        f"positives), {SYNTHETIC_BASE_ROWS:,} + {SYNTHETIC_BASE_ROWS // 4:,} base rows resampled "
        "with replacement and multiplicative noise to reach each size"
    )
    return DataSource(
        kind="synthetic",
        description=description,
        train_pool=make_pool(X_train, y_train),
        validation_pool=make_pool(X_validation, y_validation),
        fallback_reason=reason,
    )


def load_source(args: argparse.Namespace) -> DataSource:
    if args.source == "synthetic":
        return synthetic_source(args.seed)
    try:
        return warehouse_source(args.warehouse)
    except Exception as error:  # missing file, locked by a writer, not built yet, ...
        if args.source == "warehouse":
            raise SystemExit(f"Cannot read the warehouse {args.warehouse}: {error}") from error
        reason = f"warehouse {args.warehouse} not usable: {type(error).__name__}: {error}"
        return synthetic_source(args.seed, reason=reason)


def draw_rows(
    pool: FeaturePool, n: int, rng: np.random.Generator, noise: float
) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` rows drawn with replacement from ``pool``, each value scaled by exp(N(0, noise)).

    Integer-valued columns are rounded back to whole numbers (a count of 0 stays 0); NaN stays
    NaN. Done in chunks to keep the peak memory near the size of the result.
    """
    source = pool.X.to_numpy(dtype=np.float64)
    index = rng.integers(0, len(source), size=n)
    values = np.empty((n, source.shape[1]), dtype=np.float64)
    chunk = 250_000
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = source[index[start:stop]]
        if noise > 0:
            block *= np.exp(rng.normal(0.0, noise, size=block.shape))
            block[:, pool.integer_columns] = np.round(block[:, pool.integer_columns])
        values[start:stop] = block
    return pd.DataFrame(values, columns=pool.X.columns, copy=False), pool.y[index]


# ----------------------------------------------------------------------------- fit time


@dataclass
class FitRun:
    """One timed `train_xgb` call."""

    device: str
    rows: int
    positives: int
    validation_rows: int
    rounds: int  # boosting rounds the booster holds (must equal the requested rounds)
    seconds: float  # wall time of train_xgb, DMatrix construction included
    cpu_seconds: float  # user + system time of this process during the fit
    dmatrix_seconds: float  # building the training DMatrix alone (timed separately)
    load_average_before: float
    other_busy_cores: float | None  # cores other processes used meanwhile (see Meter)
    validation_pr_auc: float  # XGBoost's aucpr on the validation rows after the last round

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seconds_per_million_rows": round(self.seconds * MILLION / self.rows, 2),
            "rows_per_second": round(self.rows / self.seconds),
            "ms_per_round": round(1000 * self.seconds / self.rounds, 1),
        }


def fit_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_depth": args.max_depth, "eta": args.eta, "tree_method": "hist"}


def last_validation_pr_auc(booster: xgb.Booster, validation: xgb.DMatrix) -> float:
    """XGBoost's aucpr of all the booster's trees on the validation rows."""
    evaluated = booster.eval(validation, name="validation")  # "[0]\tvalidation-aucpr:0.123"
    return round(float(evaluated.rsplit(":", 1)[1]), 4)


def bench_fit(
    source: DataSource, devices: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    X_validation, y_validation = draw_rows(
        source.validation_pool, args.fit_validation_rows, rng, args.noise
    )
    validation = to_dmatrix(X_validation, y_validation)
    results = []
    for rows in args.rows:
        X_train, y_train = draw_rows(source.train_pool, rows, rng, args.noise)
        print(f"\n== fit: {rows:,} training rows ({int(y_train.sum()):,} positives)")
        started = time.perf_counter()
        to_dmatrix(X_train, y_train)
        dmatrix_seconds = time.perf_counter() - started
        gc.collect()
        for device in devices:
            runs = []
            for _ in range(args.repeat):
                with Meter() as meter:
                    booster = train_xgb(
                        fit_params(args),
                        X_train,
                        y_train,
                        X_validation,
                        y_validation,
                        device=device,
                        num_boost_round=args.rounds,
                        # Beyond the round budget: early stopping never ends a fit early.
                        early_stopping_rounds=args.rounds + 1,
                    )
                run = FitRun(
                    device=device,
                    rows=rows,
                    positives=int(y_train.sum()),
                    validation_rows=len(y_validation),
                    rounds=booster.num_boosted_rounds(),
                    seconds=round(meter.seconds, 2),
                    cpu_seconds=round(meter.cpu_seconds, 2),
                    dmatrix_seconds=round(dmatrix_seconds, 2),
                    load_average_before=meter.load_average_before,
                    other_busy_cores=meter.other_busy_cores,
                    validation_pr_auc=last_validation_pr_auc(booster, validation),
                )
                if run.rounds != args.rounds:
                    raise SystemExit(f"expected {args.rounds} rounds, the booster has {run.rounds}")
                runs.append(run)
                del booster
                gc.collect()
            best = min(runs, key=lambda r: r.seconds)
            summary = best.summary() | {"repeats_seconds": [r.seconds for r in runs]}
            results.append(summary)
            print(
                f"   {device}: {best.seconds:.1f} s for {best.rounds} rounds "
                f"({summary['seconds_per_million_rows']:.1f} s per million rows, "
                f"{summary['rows_per_second']:,} rows/s, {summary['ms_per_round']} ms/round), "
                f"{best.cpu_seconds:.1f} s CPU; DMatrix {dmatrix_seconds:.1f} s; "
                f"validation PR-AUC {best.validation_pr_auc:.4f} "
                f"(other processes kept {best.other_busy_cores} cores busy meanwhile)"
            )
        del X_train, y_train
        gc.collect()
    return results


# ----------------------------------------------------------------------------- tuning


def bench_split(source: DataSource, args: argparse.Namespace) -> SplitData:
    """A SplitData for tune_xgb: it reads only the train and validation splits."""
    rng = np.random.default_rng(args.seed + 1)
    X_train, y_train = draw_rows(source.train_pool, args.tune_train_rows, rng, args.noise)
    X_validation, y_validation = draw_rows(
        source.validation_pool, args.tune_validation_rows, rng, args.noise
    )
    day = datetime(2025, 1, 1)
    return SplitData(
        X_train=X_train,
        y_train=y_train,
        X_validation=X_validation,
        y_validation=y_validation,
        X_promotion=X_validation.iloc[:0],
        y_promotion=y_validation[:0],
        keys_promotion=pd.DataFrame(columns=list(KEY_COLUMNS)),
        feature_columns=list(X_train.columns),
        # Placeholder cutoffs: the bench rows are resampled, not cut by time.
        split=TimeSplit(
            train_cutoffs=(day,),
            validation_cutoffs=(day.replace(day=8),),
            promotion_cutoffs=(day.replace(day=15),),
            horizon=day.replace(day=8) - day,
        ),
    )


@dataclass(frozen=True)
class TuningConfig:
    """A study budget and the XGBoost search settings of one benchmarked study."""

    n_trials: int
    study_name: str
    storage: str
    pruning: bool
    num_boost_round: int
    early_stopping_rounds: int
    seed: int = 42
    timeout_s: float = 3600
    strategies: tuple[str, ...] = ("none", "class_weight", "random_under", "random_over", "smote")


def tune_xgb(data: SplitData, config: TuningConfig, log) -> TuningResult:
    """ml.study.tune with the XGBoost family."""
    budget = StudyBudget(
        n_trials=config.n_trials,
        timeout_s=config.timeout_s,
        seed=config.seed,
        study_name=config.study_name,
        storage=config.storage,
        pruning=config.pruning,
    )
    search = XGBoostSearch(
        list(config.strategies), config.num_boost_round, config.early_stopping_rounds
    )
    return tune(XGBOOST, data, budget, search, log=log)


def rounds_trained(trial: FrozenTrial, config: TuningConfig) -> int:
    """Boosting rounds a trial trained: up to the pruning step, or until early stopping ended it
    (best iteration + early_stopping_rounds + 1) or the round budget ran out."""
    if trial.state == TrialState.PRUNED:
        return trial.last_step + 1 if trial.last_step is not None else 0
    best = trial.user_attrs.get("best_step", trial.user_attrs.get("best_iteration"))
    if best is None:
        return 0
    return min(best + config.early_stopping_rounds + 1, config.num_boost_round)


def bench_tuning(data: SplitData, args: argparse.Namespace, work_dir: Path) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune_xgb logs one line per trial
    mlflow.set_tracking_uri(f"sqlite:///{work_dir / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment(
        "bench-train-xgb", artifact_location=(work_dir / "mlartifacts").as_uri()
    )
    counts = data.row_counts()
    print(
        f"\n== tuning: {counts['train_rows']:,} train rows ({counts['train_positives']:,} "
        f"positives), {counts['validation_rows']:,} validation rows "
        f"({counts['validation_positives']:,} positives), {args.trials} trials per study, "
        f"up to {args.tune_rounds} rounds with early stopping after "
        f"{args.tune_early_stopping}; MLflow and Optuna storage in {work_dir}"
    )
    # Untimed warm-up: the first MLflow nested run, SMOTE and sampler calls of a process carry
    # one-off costs that would otherwise all land on whichever study runs first.
    warm_up = TuningConfig(
        n_trials=2,
        seed=args.seed,
        study_name="bench-warm-up",
        storage=str(work_dir / "bench-warm-up.journal"),
        pruning=True,
        strategies=("smote", "class_weight"),
        num_boost_round=5,
        early_stopping_rounds=5,
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name="bench-warm-up"):
        tune_xgb(data, warm_up, log=lambda line: None)
    results = []
    for pruning in args.pruning_modes:
        name = f"bench-pruning-{'on' if pruning else 'off'}"
        storage = str(work_dir / f"{name}.journal")
        config = TuningConfig(
            n_trials=args.trials,
            timeout_s=args.tune_timeout,
            seed=args.seed,
            study_name=name,
            storage=storage,
            pruning=pruning,
            num_boost_round=args.tune_rounds,
            early_stopping_rounds=args.tune_early_stopping,
        )
        print(f"-- pruning={pruning}")
        with mlflow.start_run(experiment_id=experiment_id, run_name=name):
            mlflow.set_tag("bench", "train_xgb")
            with Meter() as meter:
                result = tune_xgb(data, config, log=lambda line: print(f"   {line}"))
            seconds, cpu_seconds = meter.seconds, meter.cpu_seconds
            mlflow.log_metric("best_validation_pr_auc", result.best_value)
        study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
        trials = [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "strategy": t.params.get("strategy"),
                "max_depth": t.params.get("max_depth"),
                "eta": round(t.params.get("eta", float("nan")), 4),
                "value": None if t.value is None else round(t.value, 4),
                "best_iteration": t.user_attrs.get("best_step"),
                "pruned_at_round": t.last_step if t.state == TrialState.PRUNED else None,
                "reported_rounds": len(t.intermediate_values),
                "rounds_trained": rounds_trained(t, config),
                "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
            }
            for t in study.trials
        ]
        reported = sum(t["reported_rounds"] for t in trials)
        rounds = sum(t["rounds_trained"] for t in trials)
        summary = {
            "pruning": pruning,
            "trials": result.n_trials_this_run,
            "complete": result.n_complete,
            "pruned": result.n_pruned,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "trials_per_minute": round(60 * result.n_trials_this_run / seconds, 2),
            # Less sensitive to other load on the machine than the wall-clock figure.
            "trials_per_cpu_minute": round(60 * result.n_trials_this_run / cpu_seconds, 2),
            "best_validation_pr_auc": round(result.best_value, 4),
            "best_trial": result.best_trial_number,
            "best_params": result.best_params,
            "intermediate_values_reported": reported,
            # Boosting rounds all trials trained: the work done, independent of machine load.
            "boosting_rounds": rounds,
            # pruning=False must leave the trials unwatched: no reports, hence nothing pruned.
            "pruning_off_honoured": None if pruning else (reported == 0 and result.n_pruned == 0),
            "load_average_before": meter.load_average_before,
            "other_busy_cores": meter.other_busy_cores,
            "trial_details": trials,
        }
        results.append(summary)
        print(
            f"   pruning={pruning}: {result.n_trials_this_run} trials in {seconds:.1f} s = "
            f"{summary['trials_per_minute']:.2f} trials/min "
            f"({summary['trials_per_cpu_minute']:.2f} per CPU minute; {result.n_pruned} pruned, "
            f"{result.n_complete} complete), best validation PR-AUC {result.best_value:.4f} "
            f"(trial {result.best_trial_number}); {rounds:,} boosting rounds trained, "
            f"{reported:,} intermediate values reported"
        )
        if not pruning and not summary["pruning_off_honoured"]:
            print("   !! pruning=False was NOT honoured: trials reported or were pruned")
    return results


# ----------------------------------------------------------------------------- report


MEASURED_PACKAGES = (
    "xgboost",
    "optuna",
    "mlflow",
    "numpy",
    "pandas",
    "scikit-learn",
    "imbalanced-learn",
)


def write_results(
    source: DataSource,
    gpu: dict[str, Any],
    fits: list[dict[str, Any]],
    tuning: list[dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    machine = machine_info(MEASURED_PACKAGES, "ml")
    report = {
        "benchmark": "XGBoost fit time (train_xgb) and Optuna tuning (ml.study.tune)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "gpu": gpu,
        "data": source.summary() | {"noise_sigma": args.noise},
        "fit": {
            "params": fit_params(args),
            "rounds": args.rounds,
            "early_stopping": "off (early_stopping_rounds = rounds + 1)",
            "validation_rows": args.fit_validation_rows,
            "repeat": args.repeat,
            "results": fits,
        },
        "tuning": {
            "train_rows": args.tune_train_rows,
            "validation_rows": args.tune_validation_rows,
            "trials": args.trials,
            "num_boost_round": args.tune_rounds,
            "early_stopping_rounds": args.tune_early_stopping,
            "seed": args.seed,
            "results": tuning,
        },
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "train_xgb.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    versions = machine["versions"]
    lines = [
        "# XGBoost training benchmark",
        "",
        f"{report['date']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM "
        f"({machine['cpu']}); xgboost {versions['xgboost']}, optuna {versions['optuna']}, "
        f"mlflow {versions['mlflow']}. GPU: {gpu['note']}",
        "",
        f"Data ({source.kind}): {source.description}."
        + (f" Fallback because {source.fallback_reason}." if source.fallback_reason else ""),
        "",
        "*Other busy cores*: CPU time other processes used during a measurement, per wall "
        f"second, out of {machine['cores']} cores; where it is well above 0 the machine was "
        "shared and the times are slower than it can do (XGBoost's threads wait for each other "
        "when one is descheduled, so this process's CPU seconds grow too).",
        "",
    ]
    shared = [
        m for m in [*fits, *tuning] if (m.get("other_busy_cores") or 0) > SHARED_MACHINE_CORES
    ]
    if shared:
        lines += [
            f"**{len(shared)} of {len(fits) + len(tuning)} measurements ran while other processes "
            f"used more than {SHARED_MACHINE_CORES} cores: their times are inflated.**",
            "",
        ]
    if fits:
        params = ", ".join(f"{k} {v}" for k, v in fit_params(args).items())
        lines += [
            f"## Fit time: `train_xgb`, {args.rounds} rounds, {params}",
            "",
            f"{source.train_pool.X.shape[1]} features; validation ({args.fit_validation_rows:,} "
            "rows) evaluated every round; early stopping off. Seconds include the DMatrix "
            f"construction (shown on its own too). Fastest of {args.repeat} run(s).",
            "",
            "| device | rows | seconds | s per 1M rows | rows/s | ms/round | CPU s | DMatrix s "
            "| other busy cores |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for fit in fits:
            lines.append(
                f"| {fit['device']} | {fit['rows']:,} | {fit['seconds']:.1f} "
                f"| {fit['seconds_per_million_rows']:.1f} | {fit['rows_per_second']:,} "
                f"| {fit['ms_per_round']} | {fit['cpu_seconds']:.1f} "
                f"| {fit['dmatrix_seconds']:.1f} | {fit['other_busy_cores']} |"
            )
        lines.append("")
    if tuning:
        lines += [
            f"## Tuning: `tune_xgb`, {args.trials} trials per study",
            "",
            f"{args.tune_train_rows:,} train rows, {args.tune_validation_rows:,} validation rows; "
            f"up to {args.tune_rounds} rounds, early stopping after {args.tune_early_stopping}; "
            f"sampler seed {args.seed} in both studies (TPE's first 10 trials are random, so "
            "both studies try the same first 10 parameter sets); a fresh journal storage each, "
            "and a sqlite MLflow store in a temporary folder. Trials per CPU minute count this "
            "process's user + system time. Rounds trained is the boosting work, which does not "
            "depend on the machine's load.",
            "",
            "| pruning | trials | trials/min | trials/CPU min | seconds | pruned | complete "
            "| best val PR-AUC | rounds trained | reported values | other busy cores |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for tune in tuning:
            lines.append(
                f"| {tune['pruning']} | {tune['trials']} | {tune['trials_per_minute']:.2f} "
                f"| {tune['trials_per_cpu_minute']:.2f} "
                f"| {tune['seconds']:.1f} | {tune['pruned']} | {tune['complete']} "
                f"| {tune['best_validation_pr_auc']:.4f} | {tune['boosting_rounds']:,} "
                f"| {tune['intermediate_values_reported']:,} "
                f"| {tune['other_busy_cores']} |"
            )
        off = [t for t in tuning if not t["pruning"]]
        if off:
            honoured = off[0]["pruning_off_honoured"]
            lines += [
                "",
                "pruning=False honoured by `tune_xgb` (no intermediate values, nothing pruned): "
                f"{'yes' if honoured else 'NO'}.",
            ]
        on = [t for t in tuning if t["pruning"]]
        if on and off:
            wall_ratio = on[0]["trials_per_minute"] / off[0]["trials_per_minute"]
            cpu_ratio = on[0]["trials_per_cpu_minute"] / off[0]["trials_per_cpu_minute"]
            lines += [
                "",
                f"With pruning: {wall_ratio:.2f}x the trials per minute ({cpu_ratio:.2f}x per CPU "
                f"minute) and {on[0]['boosting_rounds'] / off[0]['boosting_rounds']:.2f}x the "
                "boosting rounds (rounds of complete trials without pruning are computed as best "
                "iteration + early stopping rounds + 1, capped at the budget).",
            ]
    md_path = args.results_dir / "train_xgb.md"
    md_path.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {json_path} and {md_path}")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[250_000, 1_000_000, 2_000_000],
        help="training rows per fit measurement (default: 250k, 1M and 2M)",
    )
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds per fit")
    parser.add_argument("--max-depth", type=int, default=6, help="max_depth of the fits")
    parser.add_argument("--eta", type=float, default=0.1, help="eta of the fits")
    parser.add_argument(
        "--fit-validation-rows", type=int, default=50_000, help="validation rows of the fits"
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed fits per size and device")
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials per study")
    parser.add_argument("--tune-train-rows", type=int, default=200_000, help="tuning train rows")
    parser.add_argument(
        "--tune-validation-rows", type=int, default=50_000, help="tuning validation rows"
    )
    parser.add_argument(
        "--tune-rounds",
        type=int,
        default=300,
        help="num_boost_round per trial (TuningConfig's default is 1000; less keeps the run short)",
    )
    parser.add_argument(
        "--tune-early-stopping",
        type=int,
        default=30,
        help="early_stopping_rounds per trial (TuningConfig's default is 50)",
    )
    parser.add_argument(
        "--tune-timeout",
        type=float,
        default=3600,
        help="TuningConfig.timeout_s: a safety net, set high so every study runs all its trials",
    )
    parser.add_argument(
        "--pruning",
        choices=["both", "on", "off"],
        default="both",
        help="which tuning studies to run",
    )
    parser.add_argument(
        "--source",
        choices=["auto", "warehouse", "synthetic"],
        default="auto",
        help="rows from the warehouse (auto: when it can be read) or synthetic ones",
    )
    parser.add_argument(
        "--warehouse",
        type=Path,
        default=None,
        help="DuckDB warehouse to read features from (default: the project's)",
    )
    parser.add_argument(
        "--noise", type=float, default=0.05, help="sigma of the multiplicative log-normal noise"
    )
    parser.add_argument("--seed", type=int, default=42, help="data and sampler seed")
    parser.add_argument("--skip-fit", action="store_true", help="skip the fit-time measurement")
    parser.add_argument("--skip-tuning", action="store_true", help="skip the tuning measurement")
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="where to write results"
    )
    args = parser.parse_args(argv)
    sizes = [*args.rows, args.rounds, args.fit_validation_rows, args.repeat, args.trials]
    sizes += [args.tune_train_rows, args.tune_validation_rows, args.tune_rounds]
    if any(n < 1 for n in sizes) or args.tune_early_stopping < 1:
        parser.error("sizes, rounds, repeats and trials must be positive")
    if args.noise < 0:
        parser.error("--noise must not be negative")
    args.pruning_modes = {"both": [True, False], "on": [True], "off": [False]}[args.pruning]
    args.warehouse = (args.warehouse or settings.warehouse_path()).resolve()
    args.results_dir = args.results_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    source = load_source(args)
    summary = source.summary()
    print(f"data: {source.kind}: {source.description}")
    if source.fallback_reason:
        print(f"      (fallback: {source.fallback_reason})")
    print(
        f"      {summary['features']} features, positive rate "
        f"{summary['train_pool_positive_rate']:.2%} (train pool) / "
        f"{summary['validation_pool_positive_rate']:.2%} (validation pool), "
        f"{summary['missing_share']:.1%} of the values missing"
    )

    device = xgb_device()
    devices = ["cpu"] + (["cuda"] if device == "cuda" else [])
    gpu = {
        "xgb_device": device,
        "available": device == "cuda",
        "note": (
            "CUDA available to XGBoost: fits measured on cpu and cuda; tuning runs on cuda"
            if device == "cuda"
            else "none: xgb_device() returned 'cpu' (no CUDA GPU usable by XGBoost here), "
            "so only CPU figures"
        ),
    }
    print(f"GPU: {gpu['note']}")

    fits = [] if args.skip_fit else bench_fit(source, devices, args)
    tuning: list[dict[str, Any]] = []
    if not args.skip_tuning:
        data = bench_split(source, args)
        with tempfile.TemporaryDirectory(prefix="bench-train-xgb-") as tmp:
            tuning = bench_tuning(data, args, Path(tmp))
    write_results(source, gpu, fits, tuning, args)
    return {"fit": fits, "tuning": tuning}


if __name__ == "__main__":
    main()
