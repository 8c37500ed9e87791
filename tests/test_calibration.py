"""Calibration: ECE against a NumPy loop; temperature scaling of over-confident logits."""

import math

import numpy as np
import pytest
from matplotlib.image import imread

from jaxcls.eval.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    binary_probs,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures_multilabel,
    multilabel_calibration_report,
    negative_log_likelihood,
    plot_reliability,
    softmax,
)


# ---------------------------------------------------------------- references (loops)
def ref_ece(probs, labels, bins=15):
    """Top-label ECE with bins (b/bins, (b+1)/bins] (bin 0 also holds 0), as a plain loop."""
    members = [[] for _ in range(bins)]
    for row, label in zip(probs, labels, strict=True):
        row = [float(p) for p in row]
        confidence = max(row)
        predicted = row.index(confidence)  # the first maximum, as argmax
        for b in range(bins):
            if b / bins < confidence <= (b + 1) / bins or (b == 0 and confidence == 0.0):
                members[b].append((confidence, predicted == label))
    total = 0.0
    for group in members:
        if group:
            accuracy = sum(ok for _, ok in group) / len(group)
            confidence = sum(c for c, _ in group) / len(group)
            total += len(group) / len(labels) * abs(accuracy - confidence)
    return total


def ref_nll(probs, labels):
    return -sum(math.log(float(p[y])) for p, y in zip(probs, labels, strict=True)) / len(labels)


def well_specified(n, classes, seed):
    """Logits z and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = 1.5 * rng.normal(size=(n, classes))
    u = rng.random((n, 1))
    labels = np.minimum((np.cumsum(softmax(z), axis=1) < u).sum(axis=1), classes - 1)
    return z, labels


# ---------------------------------------------------------------- ECE and NLL
@pytest.mark.parametrize("bins", [15, 10, 1])
def test_ece_matches_loop(bins):
    rng = np.random.default_rng(0)
    probs = softmax(3.0 * rng.normal(size=(300, 5)))
    labels = rng.integers(0, 5, 300)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(
        ref_ece(probs, labels, bins), abs=1e-12
    )
    # Confidences exactly on bin edges (1/3 = 5/15, 1/5 = 3/15, 1/2, 1) and ties in argmax.
    third = 1 / 3
    edge = np.array([[third, third, third, 0, 0], [0.2] * 5, [0.5, 0.5, 0, 0, 0], [1, 0, 0, 0, 0]])
    edge_labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(edge, edge_labels, bins) == pytest.approx(
        ref_ece(edge, edge_labels, bins), abs=1e-12
    )


def test_nll_matches_loop_and_floors_zero_probabilities():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(50, 4)))
    labels = rng.integers(0, 4, 50)
    assert negative_log_likelihood(probs, labels) == pytest.approx(ref_nll(probs, labels))
    assert negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(
        -math.log(1e-12)
    )


# ---------------------------------------------------------------- temperature scaling
def test_temperature_scaling_fixes_an_over_confident_model():
    z_val, y_val = well_specified(4000, 4, seed=2)
    z_test, y_test = well_specified(4000, 4, seed=3)
    # Five times the calibrated logits: the same argmax, far too confident.
    t = fit_temperature(5.0 * z_val, y_val)
    assert t == pytest.approx(5.0, rel=0.1)
    report = calibration_report(5.0 * z_test, y_test, t)
    assert report["ece_after"] < 0.5 * report["ece_before"] and report["ece_after"] < 0.03
    assert report["nll_after"] < report["nll_before"]
    before, after = softmax(5.0 * z_test), softmax(5.0 * z_test, t)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))
    assert report["ece_before"] == pytest.approx(expected_calibration_error(before, y_test))
    assert report["nll_after"] == pytest.approx(ref_nll(after, y_test))
    # An under-confident model gets T < 1, and the calibrated one T near 1.
    assert fit_temperature(0.5 * z_val, y_val) == pytest.approx(0.5, rel=0.1)
    assert fit_temperature(z_val, y_val) == pytest.approx(1.0, rel=0.1)


def test_fitted_temperature_minimises_nll_over_a_grid():
    z, y = well_specified(500, 3, seed=4)
    logits = 3.0 * z + 0.3
    t = fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.2), np.log(20), 400))
    best = min(ref_nll(softmax(logits, g), y) for g in grid)
    assert ref_nll(softmax(logits, t), y) <= best + 1e-9


def test_degenerate_inputs_stay_finite():
    one_class = np.zeros((5, 1)), np.zeros(5, int)
    separable = np.array([[9.0, -9.0], [-9.0, 9.0], [5.0, 0.0]]), np.array([0, 1, 0])
    identical = np.zeros((4, 3)), np.array([0, 1, 2, 0])
    tiny = np.array([[0.3, -0.2]]), np.array([1])
    for logits, labels in (one_class, separable, identical, tiny):
        t = fit_temperature(logits, labels)
        assert np.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE
        report = calibration_report(logits, labels, t)
        assert all(np.isfinite(v) for v in report.values()), report
    assert fit_temperature(*one_class) == 1.0 and fit_temperature(*identical) == 1.0
    # All correct: NLL keeps falling as T -> 0 (to 0.0 in float64 well before the bound).
    assert fit_temperature(*separable) < 0.2
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_multilabel_temperatures_per_class():
    rng = np.random.default_rng(5)
    z = 1.5 * rng.normal(size=(20000, 3))  # binary entries carry less signal than softmax rows
    targets = (rng.random(z.shape) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    scale = np.array([1.0, 2.0, 5.0])
    temperatures = fit_temperatures_multilabel(z * scale, targets)
    np.testing.assert_allclose(temperatures, scale, rtol=0.1)
    report = multilabel_calibration_report(z * scale, targets, temperatures)
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    # Binary entries: the ECE of all (row, class) pairs, and 0.5 is never crossed by scaling.
    before, after = binary_probs(z * scale), binary_probs(z * scale, temperatures)
    entries = targets.reshape(-1)
    assert report["ece_before"] == pytest.approx(ref_ece(before, entries), abs=1e-12)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))
    ones = fit_temperatures_multilabel(np.zeros((0, 2)), np.zeros((0, 2)))
    np.testing.assert_array_equal(ones, [1.0, 1.0])
    constant = fit_temperatures_multilabel(np.ones((3, 2)), np.ones((3, 2)))
    assert np.all(np.isfinite(constant))


def test_plot_reliability_writes_a_png(tmp_path):
    z, y = well_specified(300, 4, seed=6)
    path = plot_reliability(softmax(5 * z), softmax(z), y, tmp_path / "eval" / "calibration.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert width > height > 100
