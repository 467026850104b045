"""The memorization classifier and filter on synthetic features (no models)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from kdstream.analysis.classify import (
    ClassifyOptions,
    fit_filter,
    recall_threshold,
    repeat_split,
    run_classifier,
    write_exclude_list,
)
from kdstream.errors import KdError

FAST = ClassifyOptions(repeats=10)


def synthetic(n_pos=30, n_neg=300, seed=0, shift=2.5):
    """Positives ("memorized") have clearly lower zlib entropy and perplexities; the KL column is noise."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    noise = rng.normal(size=(len(y), 4))
    frame = pd.DataFrame({
        "teacher_ppl": np.exp(1.0 + 0.3 * noise[:, 0] - 0.4 * shift * y),
        "baseline_ppl": np.exp(2.0 + 0.3 * noise[:, 1] - 0.4 * shift * y),
        "teacher_baseline_kl": 0.5 + 0.1 * noise[:, 2],  # uninformative
        "zlib_entropy": 300 + 20 * noise[:, 3] - 20 * shift * y,
        "example_id": np.arange(len(y)) + 1000,
    })
    return frame, y


def test_auc_on_separable_features():
    features, labels = synthetic()
    out = run_classifier(features, labels, FAST)
    assert out["auc"]["mean"] > 0.9
    assert out["positives"] == 30 and out["negatives"] == 300 and out["negatives_sampled"] == 90
    assert set(out["coefficients"]) == set(FAST.features)
    # lower zlib / perplexity => memorized: negative standardized coefficients
    assert out["coefficients"]["zlib_entropy"]["mean"] < 0
    assert out["coefficients"]["baseline_ppl"]["mean"] < 0
    for key in ("precision", "recall"):
        assert 0.0 <= out[key]["mean"] <= 1.0


def test_run_is_deterministic_given_seed_and_seeds_differ():
    features, labels = synthetic()
    assert run_classifier(features, labels, FAST) == run_classifier(features, labels, FAST)
    other = dataclasses.replace(FAST, seed=1)
    train0, test0 = repeat_split(labels, FAST, 0)
    train1, test1 = repeat_split(labels, other, 0)
    assert not np.array_equal(np.sort(np.r_[train0, test0]), np.sort(np.r_[train1, test1]))  # other negatives
    assert not np.array_equal(train0, repeat_split(labels, FAST, 1)[0])  # repeats differ too
    assert run_classifier(features, labels, other) != run_classifier(features, labels, FAST)


def test_repeat_split_keeps_every_positive_and_samples_negatives():
    _, labels = synthetic(n_pos=20, n_neg=200)
    train, test = repeat_split(labels, FAST, 3)
    rows = np.r_[train, test]
    assert len(set(rows.tolist())) == len(rows) == 80  # 20 positives + 60 negatives, no duplicates
    assert labels[rows].sum() == 20
    assert len(test) == 24 and labels[test].sum() == 6  # stratified 30%


def test_fewer_than_two_positives_is_a_clear_error():
    features, labels = synthetic(n_pos=1, n_neg=50)
    with pytest.raises(KdError, match="at least 2"):
        run_classifier(features, labels, FAST)
    with pytest.raises(KdError, match="at least 2"):
        fit_filter(features, labels, FAST)


def test_missing_feature_column_is_a_clear_error():
    features, labels = synthetic()
    with pytest.raises(KdError, match="missing"):
        run_classifier(features.drop(columns="zlib_entropy"), labels, FAST)


@pytest.mark.parametrize("change", [
    {"features": ()}, {"features": ("a", "a")}, {"negative_ratio": 0}, {"test_size": 1.0},
    {"repeats": 0}, {"seed": -1},
])
def test_options_are_validated(change):
    with pytest.raises(KdError):
        ClassifyOptions(**change)


def test_filter_reaches_target_recall_and_scores_everything():
    features, labels = synthetic(shift=1.5)  # overlapping classes: the threshold matters
    result = fit_filter(features, labels, FAST, target_recall=0.9)
    assert result.scores.shape == (len(labels),)
    flagged = result.scores >= result.threshold
    assert result.target_recall == 0.9 and flagged[labels].mean() >= 0.9
    assert result.train_recall == flagged[labels].mean()
    np.testing.assert_array_equal(result.flagged_ids, features["example_id"].to_numpy()[flagged])
    assert 0.0 <= result.expected_recall <= 1.0 and result.cv_folds == 5
    assert set(result.coefficients) == set(FAST.features)
    assert flagged.sum() < len(labels)  # it does not simply flag everything


def test_recall_threshold_rule():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.95])
    labels = np.array([True, True, True, True, False, False])
    assert recall_threshold(scores, labels, 1.0) == 0.6
    assert recall_threshold(scores, labels, 0.75) == 0.7  # 3 of 4 positives
    assert recall_threshold(scores, labels, 0.74) == 0.7
    assert recall_threshold(scores, labels, 0.25) == 0.9


def test_exclude_list_round_trips(tmp_path):
    from kdstream.distill.sources import read_exclude  # the reader `distill --exclude` uses

    ids = np.array([1005, 3, 42, 3])
    path = write_exclude_list(ids, tmp_path / "exclude.txt")
    assert path.read_text() == "3\n42\n1005\n"
    assert read_exclude(str(path)) == frozenset({3, 42, 1005})
    assert read_exclude(str(write_exclude_list([], tmp_path / "empty.txt"))) == frozenset()
