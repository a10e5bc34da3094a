"""The next-category model against the baselines on the promotion window, and its gate.

Every figure is a mean over the promotion rows with at least one category in their label
window, with a user-level bootstrap interval (`ml.evaluation.ranking`); each comparison is a
paired difference on the same resampled users. The best baseline is the one with the highest
recall@10 on this very window: the comparison the model has to win is the hardest of the four.

The gate mirrors the purchase model's (`ml.registry.promote`): a new version becomes the
`challenger`, and the `champion` only when the one-sided lower bound of its paired recall@10
gain over the current champion, both scored now on the promotion window, clears `min_gain`.
The first version has no champion to beat: it must beat the best baseline the same way, so
that the shop is never served a model that does worse than a rule it could run without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from ml.evaluation.bootstrap import DEFAULT_CONFIDENCE, Interval, PairedDifference
from ml.evaluation.ranking import (
    DEFAULT_K,
    RANKING_METRICS,
    bootstrap_means,
    has_targets,
    paired_mean_differences,
    ranking_values,
)
from ml.next_category.baselines import BASELINES, baseline_scores, n_categories_of
from ml.registry import CHALLENGER, CHAMPION, current_champion
from ml.splits import SplitData

CATEGORY_MODEL_NAME = "next-category"
MODEL_LABEL = "model"
GATE_METRIC = "recall_at_k"


@dataclass(frozen=True)
class PromotionRows:
    """The promotion rows with targets: model input, targets, users."""

    model_input: pd.DataFrame
    targets: list[np.ndarray]
    users: np.ndarray


def promotion_rows(data: SplitData) -> PromotionRows:
    if data.next_categories_promotion is None or data.sequences_promotion is None:
        raise ValueError("The split has no sequences or next-category targets")
    rows = np.flatnonzero(has_targets(data.next_categories_promotion))
    if len(rows) == 0:
        raise ValueError("No promotion row has a category in its label window")
    return PromotionRows(
        model_input=data.model_input("promotion").iloc[rows].reset_index(drop=True),
        targets=list(data.next_categories_promotion.iloc[rows]),
        users=data.keys_promotion["user_id"].to_numpy()[rows],
    )


def widen(scores: np.ndarray, n_categories: int) -> np.ndarray:
    """Scores with -inf for the categories a method has no column for (it ranks them last)."""
    missing = n_categories - scores.shape[1]
    if missing <= 0:
        return scores[:, :n_categories]
    return np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)


@dataclass(frozen=True)
class CategoryEvaluation:
    """Each method's metrics with intervals, and the model minus each baseline (paired)."""

    metrics: dict[str, dict[str, Interval]]
    differences: dict[str, dict[str, PairedDifference]]
    best_baseline: str
    n_rows: int
    n_users: int
    k: int = DEFAULT_K
    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # The rows every figure is on, so that the gate scores the champion on the same ones.
    rows: PromotionRows | None = field(default=None, repr=False)

    def table(self) -> pd.DataFrame:
        """One row per method: each metric with its interval, and the model's paired gain."""
        rows = []
        for method, metrics in self.metrics.items():
            row: dict[str, str] = {"method": method}
            for name in RANKING_METRICS:
                row[_label(name, self.k)] = metrics[name].text(4)
            difference = self.differences.get(method, {}).get(GATE_METRIC)
            row[f"model minus it ({_label(GATE_METRIC, self.k)})"] = (
                f"{difference.text()} {_reading(difference)}" if difference else "-"
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        confidence = next(iter(next(iter(self.metrics.values())).values())).confidence
        return (
            f"Next-category ranking on the promotion window: {self.n_rows:,} rows with a "
            f"category in their label window, {self.n_users:,} users; {confidence:.0%} "
            f"intervals resample users. Best baseline: {self.best_baseline}.\n\n"
            + self.table().to_markdown(index=False)
        )

    def flat_metrics(self) -> dict[str, float]:
        """For MLflow: <method>_<metric>, _ci_low, _ci_high; model_minus_<baseline>_<metric>."""
        flat: dict[str, float] = {}
        for method, metrics in self.metrics.items():
            for name, interval in metrics.items():
                key = f"{method}_{_label(name, self.k)}"
                flat[key] = interval.estimate
                flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = interval.low, interval.high
        for baseline, differences in self.differences.items():
            for name, difference in differences.items():
                key = f"model_minus_{baseline}_{_label(name, self.k)}"
                flat[key] = difference.estimate
                flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = difference.low, difference.high
        return flat


def _label(name: str, k: int) -> str:
    return name.replace("_k", f"_{k}")


def _reading(difference: PairedDifference) -> str:
    if difference.low > 0:
        return "(model better)"
    if difference.high < 0:
        return "(baseline better)"
    return "(not distinguishable)"


def evaluate_against_baselines(
    data: SplitData,
    model_scores: Callable[[pd.DataFrame], np.ndarray],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    k: int = DEFAULT_K,
) -> CategoryEvaluation:
    """The model (`model_scores(model_input)` -> (rows, categories)) and every baseline on the
    promotion rows with targets. Baselines learn from the train role only."""
    if data.sequences_train is None or data.next_categories_train is None:
        raise ValueError("The split has no sequences or next-category targets")
    rows = promotion_rows(data)
    model = np.asarray(model_scores(rows.model_input), dtype=np.float64)
    n_categories = max(
        model.shape[1],
        n_categories_of(rows.model_input["category_indexes"], rows.targets),
    )
    scores = {MODEL_LABEL: widen(model, n_categories)}
    baselines = baseline_scores(
        rows.model_input["category_indexes"],
        data.sequences_train["category_indexes"],
        data.next_categories_train,
        n_categories,
    )
    scores.update(baselines)
    values = {method: ranking_values(s, rows.targets, k) for method, s in scores.items()}
    metrics = {
        method: bootstrap_means(v, rows.users, n_resamples, seed, confidence)
        for method, v in values.items()
    }
    differences = {
        baseline: paired_mean_differences(
            values[MODEL_LABEL], values[baseline], rows.users, n_resamples, seed, confidence
        )
        for baseline in BASELINES
    }
    best = max(BASELINES, key=lambda b: metrics[b][GATE_METRIC].estimate)
    return CategoryEvaluation(
        metrics=metrics,
        differences=differences,
        best_baseline=best,
        n_rows=len(rows.targets),
        n_users=int(pd.Series(rows.users).nunique()),
        k=k,
        values=values,
        rows=rows,
    )


@dataclass(frozen=True)
class CategoryDecision:
    version: str
    compared_with: str  # "v<n>" (the champion) or the best baseline's name
    difference: PairedDifference
    promoted: bool
    reason: str


def promote_category_model(
    client: mlflow.MlflowClient,
    version: str,
    evaluation: CategoryEvaluation,
    data: SplitData,
    score_version: Callable[[str, pd.DataFrame], np.ndarray],
    min_gain: float = 0.0,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    model_name: str = CATEGORY_MODEL_NAME,
) -> CategoryDecision:
    """Makes `version` the challenger, and the champion when its recall@k gain over the
    champion (or, with none yet, over the best baseline) has a lower bound above `min_gain`.
    The evidence goes into version tags before any alias moves."""
    champion = current_champion(client, model_name)
    k = evaluation.k
    if champion is None or champion == version:
        compared_with = evaluation.best_baseline
        difference = evaluation.differences[compared_with][GATE_METRIC]
    else:
        compared_with = f"v{champion}"
        rows = evaluation.rows or promotion_rows(data)
        champion_scores = np.asarray(score_version(champion, rows.model_input), np.float64)
        n_categories = max(
            champion_scores.shape[1],
            n_categories_of(rows.model_input["category_indexes"], rows.targets),
        )
        champion_values = ranking_values(widen(champion_scores, n_categories), rows.targets, k)
        difference = paired_mean_differences(
            {GATE_METRIC: evaluation.values[MODEL_LABEL][GATE_METRIC]},
            {GATE_METRIC: champion_values[GATE_METRIC]},
            rows.users,
            n_resamples,
            seed,
            confidence,
        )[GATE_METRIC]
    promoted = difference.lower_bound > min_gain
    verdict = "gain shown: promoted" if promoted else "gain not shown: not promoted"
    reason = (
        f"v{version} minus {compared_with}, recall@{k} on the promotion window: "
        f"{difference.text()} ({confidence:.0%} interval), one-sided lower bound "
        f"{difference.lower_bound:+.4f} {'>' if promoted else '<='} minimum gain "
        f"{min_gain:+.4f}: {verdict}"
    )
    tags = {
        "promotion_decision": "promoted" if promoted else "not_promoted",
        "promotion_reason": reason,
        "compared_with": compared_with,
        f"recall_at_{k}_difference": f"{difference.estimate:.6f}",
        f"recall_at_{k}_difference_lower_bound": f"{difference.lower_bound:.6f}",
        "gate_min_gain": f"{min_gain:g}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    return CategoryDecision(version, compared_with, difference, promoted, reason)
