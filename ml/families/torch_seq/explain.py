"""Why the sequence model scored a shopper as it did: per static feature by occlusion, and per
past event by integrated gradients, written as a shop manager reads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.families.torch_seq.inputs import SequenceTensors
from ml.families.torch_seq.train import TrainedSequenceModel, input_tensors, predict_logits


def feature_contributions(
    model: TrainedSequenceModel, model_input: pd.DataFrame, batch_size: int = 1024
) -> pd.DataFrame:
    """Per row and static feature: how much the feature moved the logit, by occlusion.

    A feature's contribution is the row's logit minus its logit with that feature set to the
    training average (standardized 0, "not missing"), everything else and the events unchanged.
    So the intervention list can name the features behind a sequence model's score too, in the
    same sign convention as XGBoost's SHAP values (larger = pushed the score up). One forward
    pass per feature over the given rows: meant for the top-k list, not for every user.
    """
    tensors = input_tensors(model, model_input)
    base = predict_logits(model.net, tensors, batch_size)
    scaler = model.scaler
    n_columns = len(scaler.columns)
    contributions = np.empty((len(model_input), n_columns), dtype=np.float64)
    for position, column in enumerate(scaler.columns):
        occluded = tensors.static.clone()
        occluded[:, position] = 0.0
        if column in scaler.missing_columns:
            occluded[:, n_columns + scaler.missing_columns.index(column)] = 0.0
        replaced = SequenceTensors(*tensors.as_tuple()[:4], static=occluded)
        contributions[:, position] = base - predict_logits(model.net, replaced, batch_size)
    return pd.DataFrame(contributions, columns=scaler.columns, index=model_input.index)


# What a shop manager reads for each event type code of dbt_project/seeds/event_types.csv.
EVENT_VERBS = {1: "viewed", 2: "carted", 3: "removed from the cart", 4: "bought", 5: "wishlisted"}
PURCHASE_CODE = 4
IG_STEPS = 32


def integrated_gradients(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    baseline: torch.Tensor,
    steps: int = IG_STEPS,
) -> torch.Tensor:
    """(x - baseline) times the mean gradient of f along the straight path from the baseline
    to x (midpoint rule, `steps` points): each input's share of f(x) - f(baseline) (the shares
    add up to it, up to the approximation). f maps a batch to one output per row."""
    total = torch.zeros_like(x)
    for step in range(steps):
        alpha = (step + 0.5) / steps
        point = (baseline + alpha * (x - baseline)).detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(f(point).sum(), point)
        total += gradient
    return (x - baseline) * total / steps


def event_attributions(
    model: TrainedSequenceModel,
    model_input: pd.DataFrame,
    steps: int = IG_STEPS,
    batch_size: int = 256,
) -> list[np.ndarray]:
    """Per row, one number per kept event (its last `max_length` events, oldest first): how much
    that event moved the purchase logit, by integrated gradients over the events' projected
    inputs from a baseline of blank events (zeros; the static features and the number of
    events stay as they are). Positive: the event raised the score."""
    tensors = input_tensors(model, model_input)
    net = model.net.eval()
    device = next(net.parameters()).device
    rows: list[np.ndarray] = []
    # A cuDNN GRU computes gradients only in training mode; the plain kernels do in eval mode.
    with torch.backends.cudnn.flags(enabled=False), torch.autocast(device.type, enabled=False):
        for start in range(0, len(tensors), batch_size):
            stop = start + batch_size
            lengths = tensors.lengths[start:stop].to(device)
            width = max(1, int(lengths.max()))
            with torch.no_grad():
                x = net.event_inputs(
                    tensors.event_types[start:stop, :width].to(device),
                    tensors.categories[start:stop, :width].to(device),
                    tensors.continuous[start:stop, :width].to(device),
                ).float()
            static = tensors.static[start:stop].to(device)
            shares = integrated_gradients(
                lambda events, lengths=lengths, static=static: net.score_events(
                    events, lengths, static
                ),
                x,
                torch.zeros_like(x),
                steps,
            ).sum(dim=-1)
            for row, length in enumerate(lengths.tolist()):
                rows.append(shares[row, :length].detach().cpu().double().numpy())
    return rows


def _ago(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return "within the hour before"
    if hours < 48:
        return f"{hours:.0f} h before"
    return f"{hours / 24:.0f} d before"


def describe_events(
    sequence: pd.Series,
    attributions: np.ndarray,
    names: dict[int, str],
    n: int = 3,
) -> list[str]:
    """The n events that raised the score most (positive attributions only), as a shop manager
    reads them, e.g. "carted electronics.smartphone 3 h before, not bought (+0.42)".
    `sequence` holds one row's SEQUENCE_COLUMNS; `attributions` its kept (last) events'."""
    kept = len(attributions)
    codes = np.asarray(sequence["event_type_codes"], dtype=np.int64)[-kept:] if kept else []
    categories = np.asarray(sequence["category_indexes"], dtype=np.int64)[-kept:] if kept else []
    seconds = np.asarray(sequence["seconds_before_cutoff"], dtype=float)[-kept:] if kept else []
    texts = []
    for position in np.argsort(-attributions, kind="stable")[:n]:
        push = float(attributions[position])
        if push <= 0:
            break
        code, category = int(codes[position]), int(categories[position])
        what = names.get(category, "an item without a category") if category else "an item"
        text = f"{EVENT_VERBS.get(code, f'event {code}')} {what} {_ago(seconds[position])}"
        if code == 2:  # a cart: was the category bought afterwards?
            later = (codes[position + 1 :] == PURCHASE_CODE) & (
                categories[position + 1 :] == category
            )
            text += ", bought later" if later.any() else ", not bought"
        texts.append(f"{text} ({push:+.2f})")
    return texts


HEATMAP_ROWS = 8


def save_attribution_heatmap(
    attributions: list[np.ndarray], sequences: pd.DataFrame, path: Path
) -> Path:
    """One row per shopper, one cell per past event (newest on the right), coloured by how much
    the event moved the purchase logit, each cell labelled with the event type's initial."""
    width = max((len(row) for row in attributions), default=1)
    grid = np.full((len(attributions), width), np.nan)
    labels = np.full((len(attributions), width), "", dtype=object)
    for row, values in enumerate(attributions):
        grid[row, width - len(values) :] = values
        codes = np.asarray(sequences.iloc[row]["event_type_codes"])[-len(values) :]
        for offset, code in enumerate(codes):
            labels[row, width - len(values) + offset] = EVENT_VERBS.get(int(code), "?")[0]
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    figure = Figure(figsize=(max(6.0, width * 0.25), 1.0 + 0.45 * len(attributions)))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (row, column), label in np.ndenumerate(labels):
        if label:
            axes.text(column, row, label, ha="center", va="center", fontsize=6)
    axes.set_xlabel("past events, oldest to newest (v view, c cart, r remove, b buy, w wishlist)")
    axes.set_ylabel("shopper")
    axes.set_title("What each event did to the purchase score (integrated gradients)")
    figure.colorbar(image, ax=axes, label="change of the logit")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
