"""Temperature scaling, expected calibration error, NLL and the reliability diagram.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the
logits by one scalar T > 0 fitted on validation (for multi-label, one T per class on its
sigmoid). Dividing by a positive number never changes the argmax, so accuracy is untouched.
Everything computes in float64 NumPy; results are plain floats, ready for metrics.json.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, logit

# Bins of the expected calibration error, as in Guo et al.
ECE_BINS = 15
# T is searched in [0.05, 20]. Beyond these the validation set says little: all correct (NLL
# keeps falling as T -> 0) or no signal (T -> inf); the bounds keep one small validation set
# from making test probabilities one-hot or uniform. Real fits land near 0.5..5.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# Probability floor inside log(): one confidently wrong row costs at most -log(1e-12) = 27.6.
_PROB_FLOOR = 1e-12


def _minimize_log_temperature(nll: Callable[[float], float]) -> float:
    """argmin of nll(T) over T in the bounds, searched on log T; 1.0 when no T beats it.

    nll(1/b) is convex in b = 1/T (log-sum-exp minus a linear term), so it is unimodal in
    log T too and a bounded 1-D search finds the global minimum on the interval.
    """
    lo, hi = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    result = minimize_scalar(lambda u: nll(np.exp(u)), bounds=(lo, hi), method="bounded")
    t = float(np.exp(result.x))
    # A flat or non-finite objective (one class, identical logits) keeps the model as it is.
    if not np.isfinite(t) or not nll(t) < nll(1.0):
        return 1.0
    return t


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    if logits.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits [N, C] and labels [N, ...], got {logits.shape}, {labels.shape}"
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or inf")
    return logits, labels


def _softmax_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_p = log_softmax(logits / temperature, axis=-1)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def _sigmoid_nll(logits: np.ndarray, positive: np.ndarray, temperature) -> np.ndarray:
    x = logits / temperature
    # -log p_t = -log sigmoid(x) for a positive entry, -log sigmoid(-x) for a negative one.
    return -np.mean(np.where(positive, log_expit(x), log_expit(-x)), axis=0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits [N, C], labels [N])."""
    logits, labels = _check(logits, labels)
    if not len(labels):
        return 1.0
    return _minimize_log_temperature(lambda t: _softmax_nll(logits, labels, t))


def fit_temperatures_multilabel(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class T [C] (float64), each minimising its class's binary NLL of sigmoid(x / T)."""
    logits, targets = _check(logits, targets)
    if not len(logits):
        return np.ones(logits.shape[1])
    positive = np.asarray(targets) == 1
    out = []
    for c in range(logits.shape[1]):
        x, y = logits[:, c], positive[:, c]
        out.append(_minimize_log_temperature(lambda t, x=x, y=y: float(_sigmoid_nll(x, y, t))))
    return np.asarray(out, np.float64)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple:
    """Per bin: (count [bins] int, mean confidence [bins], accuracy [bins]; 0 in empty bins).

    Top-label: confidence = max_c probs, correct = (argmax == label). Bins are equal-width over
    [0, 1], right-closed: bin b holds confidences in (b/bins, (b+1)/bins]; bin 0 also holds 0.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs [N, C] and labels [N], got {probs.shape}, {labels.shape}")
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.arange(bins + 1) / bins  # b / bins, correctly rounded (linspace may be 1 ulp off)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    safe = np.maximum(count, 1)
    mean_conf = np.bincount(index, weights=confidence, minlength=bins) / safe
    accuracy = np.bincount(index, weights=correct, minlength=bins) / safe
    return count, mean_conf, accuracy


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """sum_b (n_b / N) |accuracy_b - confidence_b| over top-label confidence bins; 0 for N = 0."""
    count, mean_conf, accuracy = reliability_bins(probs, labels, bins)
    total = count.sum()
    return float(np.sum(count * np.abs(accuracy - mean_conf)) / total) if total else 0.0


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log probs[n, labels[n]], probabilities floored at 1e-12; 0 for N = 0."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if not len(labels):
        return 0.0
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, _PROB_FLOOR))))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the last axis, float64."""
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1))


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = ECE_BINS
) -> dict:
    """ECE and NLL of softmax(logits) and softmax(logits / T): flat keys for metrics.json."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "temperature": float(temperature),
        "ece_bins": bins,
        "ece_before": expected_calibration_error(before, labels, bins),
        "ece_after": expected_calibration_error(after, labels, bins),
        "nll_before": negative_log_likelihood(before, labels),
        "nll_after": negative_log_likelihood(after, labels),
    }


def sigmoid(logits: np.ndarray, temperatures: float | np.ndarray = 1.0) -> np.ndarray:
    """Element-wise sigmoid(logits / T) in float64 (T per class, or one), stable for any logit."""
    return np.exp(log_expit(np.asarray(logits, np.float64) / np.asarray(temperatures, np.float64)))


def binary_probs(logits: np.ndarray, temperatures: float | np.ndarray = 1.0) -> np.ndarray:
    """[N * C, 2] probabilities (1 - p, p) of every (row, class) entry, p = sigmoid(x / T_c)."""
    p = sigmoid(logits, temperatures)
    return np.stack([1.0 - p, p], axis=-1).reshape(-1, 2)


def uncalibrated_thresholds(thresholds: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Thresholds on sigmoid(x / T_c) as thresholds on the plain sigmoid(x) with the same
    decisions: sigmoid(x / T) >= t exactly when sigmoid(x) >= sigmoid(T * logit(t)), T > 0."""
    t = np.asarray(thresholds, np.float64)
    with np.errstate(divide="ignore"):  # logit(0) = -inf, logit(1) = inf: kept as 0 and 1
        return expit(np.asarray(temperatures, np.float64) * logit(t))


def multilabel_calibration_report(
    logits: np.ndarray, targets: np.ndarray, temperatures: np.ndarray, bins: int = ECE_BINS
) -> dict:
    """``calibration_report`` for sigmoid outputs: every (row, class) entry is one binary decision.

    ECE bins the confidence max(p, 1 - p) of each entry; NLL is the mean binary NLL per entry.
    """
    entries = (np.asarray(targets) == 1).astype(np.int64).reshape(-1)
    before, after = binary_probs(logits), binary_probs(logits, temperatures)
    return {
        "temperature": [float(t) for t in np.atleast_1d(temperatures)],
        "ece_bins": bins,
        "ece_before": expected_calibration_error(before, entries, bins),
        "ece_after": expected_calibration_error(after, entries, bins),
        "nll_before": negative_log_likelihood(before, entries),
        "nll_after": negative_log_likelihood(after, entries),
    }


def _draw(ax, probs: np.ndarray, labels: np.ndarray, bins: int, title: str) -> None:
    count, mean_conf, accuracy = reliability_bins(probs, labels, bins)
    ece = expected_calibration_error(probs, labels, bins)
    edges = np.arange(bins + 1) / bins
    filled = count > 0
    left, width = edges[:-1][filled], 1.0 / bins
    ax.bar(left, accuracy[filled], width, align="edge", edgecolor="black", label="accuracy")
    # The gap to the mean confidence of each bin: the part that calibration should remove.
    gap = (mean_conf - accuracy)[filled]
    ax.bar(
        left,
        gap,
        width,
        bottom=accuracy[filled],
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f} ({bins} bins), n = {int(count.sum())}")
    ax.legend(loc="upper left")


def plot_reliability(
    probs_before: np.ndarray,
    probs_after: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    bins: int = ECE_BINS,
) -> Path:
    """Reliability diagrams before and after temperature scaling, side by side, as a PNG."""
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    _draw(left, probs_before, labels, bins, "before")
    _draw(right, probs_after, labels, bins, "after temperature scaling")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
