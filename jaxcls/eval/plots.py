"""PNG pictures of a run: t-SNE of features, confusion matrix, training curves, centroid heatmap.

Figures are built with matplotlib's object API (no pyplot), so nothing here touches the global
backend or needs a display. A CJK font is used for class names when one is installed; without
one, Chinese names render as boxes and matplotlib's missing-glyph warnings are silenced.
"""

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from jaxcls.errors import UserError

_CJK_FONTS = (
    "Noto Sans CJK SC|Noto Sans SC|Source Han Sans SC|WenQuanYi Zen Hei|WenQuanYi Micro Hei|"
    "SimHei|Microsoft YaHei|PingFang SC|Arial Unicode MS"
).split("|")
# Matrices larger than this are drawn without per-cell numbers, which would be unreadable.
_ANNOTATE_MAX = 20
# (title, y label, (split, key) lines) of the curve panels; what shares an axis is one quantity.
# The training "loss" is the objective (classification + weight x contrastive) and is never drawn
# against the validation "loss", which is the cross-entropy of the predictions.
_SCORES = tuple((split, key) for key in ("accuracy", "macro_f1") for split in ("val", "test"))
_PANELS = (
    (
        "Training objective: loss = cls_loss + con_weight x con_loss",
        "loss",
        (("train", "loss"), ("train", "cls_loss"), ("train", "con_loss")),
    ),
    ("Validation cross-entropy", "cross-entropy", (("val", "loss"), ("test", "loss"))),
    ("Accuracy and macro-F1", "score", _SCORES),
    ("Feature similarity", "mean cosine similarity", (("val", "intra_sim"), ("val", "inter_sim"))),
    ("Silhouette", "silhouette (cosine)", (("val", "silhouette"),)),
    ("Contrastive weight", "weight", (("train", "con_weight"),)),
    ("Contrastive temperature", "temperature", (("train", "temperature"),)),
    ("Learning rate", "learning rate", (("train", "lr"),)),
    ("Gradient norm", "global norm", (("train", "grad_norm"),)),
    ("Throughput", "tokens / s", (("train", "tokens_per_s"),)),
)
# With a plain cross-entropy classification loss the training cls_loss is the same quantity as
# the validation loss: drawn on one axis, they show over- or underfitting.
_CE_PANEL = (
    "Cross-entropy: training (cls_loss) and validation",
    "cross-entropy",
    (("train", "cls_loss"), ("val", "loss"), ("test", "loss")),
)
_SPLIT_STYLE = {
    "train": {"linestyle": "-", "linewidth": 1.0},
    "val": {"linestyle": "-", "marker": "o", "markersize": 4},
    "test": {"linestyle": "none", "marker": "*", "markersize": 12},
}


@functools.cache
def _cjk_fonts() -> tuple[str, ...]:
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return tuple(name for name in _CJK_FONTS if name in installed)


def _font_rc() -> dict:
    return {"font.family": "sans-serif", "font.sans-serif": [*_cjk_fonts(), "DejaVu Sans"]}


def _display_names(names: Sequence[str]) -> list[str]:
    """Class names for ticks and legends, numbered when CJK would render as boxes (no font)."""
    if _cjk_fonts() or all(ch < "\u2e80" for name in names for ch in name):
        return list(names)
    return [f"#{i} {name}" for i, name in enumerate(names)]


@contextlib.contextmanager
def _figure(path: str | Path, figsize: tuple[float, float]) -> Iterator[Figure]:
    """Yields a Figure and saves it as PNG to `path` on exit."""
    with matplotlib.rc_context(_font_rc()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig = Figure(figsize=figsize, layout="constrained")
        yield fig
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def plot_tsne(
    features: np.ndarray,
    labels: Sequence[int],
    label_names: Sequence[str],
    path: str | Path,
    max_points: int = 3000,
    seed: int = 0,
) -> None:
    """2-D t-SNE of L2-normalised features by class; stratified subsample above max_points."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n_all = len(y)
    keep = _stratified_subsample(y, max_points, seed)
    x, y = x[keep], y[keep]
    # On unit vectors euclidean distance is monotone in cosine distance, the losses' geometry.
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(y) >= 2:
        # t-SNE needs perplexity < n; 30 is scikit-learn's default for large n.
        perplexity = max(1.0, min(30.0, (len(y) - 1) / 3))
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
        # On small inputs OpenMP's thread sync costs more than the work: one thread was 20x
        # faster for 18 points and 12x for 300 on a busy 2-core machine.
        with threadpool_limits(1 if len(y) < 1000 else None, user_api="openmp"):
            xy = tsne.fit_transform(x)
    else:
        xy = np.zeros((len(y), 2))
    with _figure(path, (8.5, 6.5)) as fig:
        ax = fig.add_subplot()
        names = _display_names(label_names)
        for c, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
            mask = y == c
            if mask.any():
                ax.scatter(
                    *xy[mask].T, s=9, alpha=0.75, color=color, label=f"{name} ({mask.sum()})"
                )
        shown = f"{len(y)} of {n_all}" if len(y) < n_all else f"{n_all}"
        ax.set_title(f"t-SNE of the pooled features ({shown} samples)")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(
            title="class (samples)",
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            markerscale=2,
            fontsize="small",
        )


def _stratified_subsample(y: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most about max_points rows, each class keeping its share (at least one)."""
    if len(y) <= max_points:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = max(1, round(len(idx) * max_points / len(y)))
        keep.append(rng.choice(idx, size=take, replace=False))
    return np.sort(np.concatenate(keep))


def _heatmap(
    fig: Figure,
    values: np.ndarray,
    names: Sequence[str],
    text: list[list[str]],
    cmap: str,
    vmin: float,
    vmax: float,
    colorbar: str,
) -> Axes:
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="lightgray")  # nan = gray
    image = ax.imshow(masked, cmap=colormap, vmin=vmin, vmax=vmax)
    fig.colorbar(image, ax=ax, label=colorbar, shrink=0.8)
    ticks = np.arange(len(names))
    names = _display_names(names)
    ax.set_xticks(ticks, names, rotation=45 if len(names) > 3 else 0, ha="right")
    ax.set_yticks(ticks, names)
    if len(names) <= _ANNOTATE_MAX:
        for i, j in np.ndindex(values.shape):
            r, g, b, _ = image.cmap(image.norm(values[i, j]))
            # White text on dark cells, black on light ones (perceived luminance).
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize="small", color=color)
    return ax


def plot_confusion(
    cm: Sequence[Sequence[int]],
    label_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
) -> None:
    """Confusion matrix heatmap, rows = true class; cells show the count (and the row share)."""
    counts = np.asarray(cm, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    values = shares if normalize else counts.astype(np.float64)
    text = [
        [
            f"{counts[i, j]}\n{shares[i, j]:.0%}" if normalize else f"{counts[i, j]}"
            for j in range(len(label_names))
        ]
        for i in range(len(label_names))
    ]
    side = max(5.0, 0.55 * len(label_names) + 3)
    with _figure(path, (side + 1, side)) as fig:
        vmax = 1.0 if normalize else max(float(values.max()), 1.0)
        bar = "share of the true class" if normalize else "count"
        ax = _heatmap(fig, values, label_names, text, "Blues", 0.0, vmax, bar)
        ax.set_xlabel("Predicted label")
        ax.set_ylabel("True label")
        kind = "rows normalised by true class" if normalize else "counts"
        ax.set_title(f"Confusion matrix ({kind}, {counts.sum()} samples)")


def plot_centroids(
    sim_matrix: Sequence[Sequence[float | None]], label_names: Sequence[str], path: str | Path
) -> None:
    """Heatmap of the cosine similarity between class centroids (gray = class absent)."""
    values = np.array(sim_matrix, dtype=np.float64)  # None -> nan
    text = [["" if math.isnan(v) else f"{v:.2f}" for v in row] for row in values]
    side = max(5.0, 0.55 * len(label_names) + 3)
    with _figure(path, (side + 1, side)) as fig:
        ax = _heatmap(fig, values, label_names, text, "coolwarm", -1.0, 1.0, "cosine similarity")
        ax.set_title("Cosine similarity between class centroids")


def curve_panels(
    series: dict[tuple[str, str], dict[int, float]], train_ce: bool = False
) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The panels ``plot_curves`` draws: (title, y label, the (split, key) lines it has).

    ``train_ce``: the classification loss is plain cross-entropy (no focal term, class weights or
    label smoothing), so the training ``cls_loss`` shares the validation cross-entropy's panel.
    """
    panels = []
    for title, ylabel, lines in _PANELS:
        if train_ce and title == "Validation cross-entropy":
            title, ylabel, lines = _CE_PANEL
        present = [line for line in lines if series.get(line)]
        if present:
            panels.append((title, ylabel, present))
    return panels


def plot_curves(metrics_jsonl_path: str | Path, path: str | Path, train_ce: bool = False) -> None:
    """Training curves from metrics.jsonl: objective, validation cross-entropy, scores, feature
    metrics, schedules, lr, ... (see ``curve_panels``)."""
    series = _read_series(Path(metrics_jsonl_path))
    panels = curve_panels(series, train_ce)
    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    with _figure(path, (6.5 * ncols, 3.6 * nrows)) as fig:
        fig.suptitle(f"Training curves: {Path(metrics_jsonl_path).parent.name or 'run'}")
        if not panels:
            ax = fig.add_subplot()
            ax.axis("off")
            ax.text(0.5, 0.5, f"no metrics logged yet in {metrics_jsonl_path}", ha="center")
        for index, (title, ylabel, lines) in enumerate(panels, start=1):
            ax = fig.add_subplot(nrows, ncols, index)
            keys = list(dict.fromkeys(key for _, key in lines))
            for split, key in lines:
                points = series[(split, key)]
                steps = sorted(points)
                ax.plot(
                    steps,
                    [points[s] for s in steps],
                    color=f"C{keys.index(key)}",
                    label=f"{split} {key}",
                    **_SPLIT_STYLE[split],
                )
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")


def _read_series(path: Path) -> dict[tuple[str, str], dict[int, float]]:
    """(split, key) -> {step: value}; a step logged twice (resumed run) keeps the last value."""
    if not path.is_file():
        raise UserError(f"metrics file {path} not found; train first (python train.py ...)")
    series: dict[tuple[str, str], dict[int, float]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} line {number} is not JSON ({e.msg}); fix or delete it"
            ) from None
        if not isinstance(event, dict) or "step" not in event:
            continue
        split = event.get("split", "train")
        if split not in _SPLIT_STYLE:
            continue
        for key, value in event.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault((split, key), {})[event["step"]] = value
    return series
