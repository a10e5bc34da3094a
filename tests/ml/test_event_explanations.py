"""Explanations over past events: integrated gradients with known answers, and the sentences a
shop manager reads."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ml.families.torch_seq.explain import (
    describe_events,
    event_attributions,
    integrated_gradients,
    save_attribution_heatmap,
)
from ml.families.torch_seq.train import input_tensors, train_sequence_model
from ml.splits import SplitData
from ml.synthetic_split import make_split_data
from tests.ml.test_seq_model import CPU, SMALL

pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def data() -> SplitData:
    return make_split_data(seed=2, n_train=400, n_eval=200, with_sequences=True)


@pytest.fixture(scope="module")
def model(data: SplitData, single_thread_torch: None):  # noqa: ANN201
    return train_sequence_model(data, replace(SMALL, max_epochs=1), seed=0, device=CPU)


def test_integrated_gradients_of_a_linear_function_are_exact() -> None:
    weights = torch.tensor([[1.0, -2.0, 0.5]])
    x = torch.tensor([[2.0, 1.0, 4.0]])
    shares = integrated_gradients(lambda v: (v * weights).sum(dim=1), x, torch.zeros_like(x))
    torch.testing.assert_close(shares, weights * x)


def test_a_known_model_gets_its_known_attributions(model, data: SplitData) -> None:  # noqa: ANN001
    """A stand-in scoring function that counts each event's first projected input with weight
    1 at the newest event and 0 elsewhere: only the newest event may get any attribution."""
    frame = data.model_input("promotion").head(30)

    def newest_only(x: torch.Tensor, lengths: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        newest = (lengths.long() - 1).clamp(min=0)
        return 3.0 * x[torch.arange(len(x)), newest, 0]

    original = model.net.score_events
    model.net.score_events = newest_only
    try:
        rows = event_attributions(model, frame)
    finally:
        model.net.score_events = original
    tensors = input_tensors(model, frame)
    with torch.no_grad():
        projected = model.net.event_inputs(
            tensors.event_types, tensors.categories, tensors.continuous
        )
    for row, values in enumerate(rows):
        length = int(tensors.lengths[row])
        assert len(values) == length
        if length:
            expected = np.zeros(length)
            expected[-1] = 3.0 * float(projected[row, length - 1, 0])
            np.testing.assert_allclose(values, expected, atol=1e-5)


def test_attributions_add_up_to_the_change_of_the_logit(model, data: SplitData) -> None:  # noqa: ANN001
    frame = data.model_input("promotion").head(12)
    rows = event_attributions(model, frame, steps=128)
    tensors = input_tensors(model, frame)
    with torch.no_grad():
        x = model.net.event_inputs(tensors.event_types, tensors.categories, tensors.continuous)
        full = model.net.score_events(x, tensors.lengths, tensors.static)
        blank = model.net.score_events(torch.zeros_like(x), tensors.lengths, tensors.static)
    totals = np.array([values.sum() for values in rows])
    np.testing.assert_allclose(totals, (full - blank).numpy(), atol=2e-2)


def test_events_read_like_the_shop() -> None:
    sequence = pd.Series(
        {
            "event_type_codes": np.array([1, 2, 2, 4, 1]),
            "category_indexes": np.array([5, 7, 5, 5, 0]),
            "seconds_before_cutoff": np.array([90_000.0, 10_800.0, 7_200.0, 3_600.0, 600.0]),
        }
    )
    names = {5: "appliances.kettle", 7: "electronics.smartphone"}
    attributions = np.array([0.1, 0.42, 0.3, -0.2, 0.05])
    assert describe_events(sequence, attributions, names) == [
        "carted electronics.smartphone 3 h before, not bought (+0.42)",
        "carted appliances.kettle 2 h before, bought later (+0.30)",
        "viewed appliances.kettle 25 h before (+0.10)",
    ]
    # Only events that raised the score; only the kept (newest) events are attributed.
    assert describe_events(sequence, np.array([-0.1, 0.2]), names) == [
        "viewed an item within the hour before (+0.20)"
    ]


def test_the_heatmap_is_drawn(model, data: SplitData, tmp_path) -> None:  # noqa: ANN001
    frame = data.model_input("promotion").head(5)
    path = save_attribution_heatmap(event_attributions(model, frame), frame, tmp_path / "h.png")
    assert path.stat().st_size > 5_000
