"""Each picture is written as a real PNG; the curves reader and the HTML report keep the numbers."""

import base64
import json

import numpy as np
import pytest

from jaxcls.errors import UserError
from jaxcls.eval.metrics import classification_metrics, feature_metrics
from jaxcls.eval.plots import (
    _read_series,
    _stratified_subsample,
    curve_panels,
    plot_centroids,
    plot_confusion,
    plot_curves,
    plot_tsne,
)
from jaxcls.eval.report import write_report

NAMES = ["正面", "负面", "neutral"]


def _assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes


@pytest.fixture
def clustered():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    return rng.normal(size=(3, 12))[y] * 3 + rng.normal(size=(90, 12)), y


def _write_metrics(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")


def _full_events():
    events = []
    for step in range(0, 100, 10):
        train = {"step": step, "split": "train", "loss": 1 / (1 + step), "cls_loss": 0.5}
        train |= {"con_loss": 0.4, "lr": 1e-4, "temperature": 0.1, "con_weight": 0.5}
        events.append(train | {"grad_norm": 1.0, "tokens_per_s": 900.0})
        if step % 30 == 0:
            val = {"step": step, "split": "val", "loss": 0.7, "accuracy": 0.8, "macro_f1": 0.7}
            events.append(val | {"intra_sim": 0.5, "inter_sim": 0.1, "silhouette": None})
    return events + [{"step": 90, "split": "test", "accuracy": 0.81, "macro_f1": 0.79}]


def test_tsne_writes_a_png(tmp_path, clustered):
    plot_tsne(*clustered, NAMES, tmp_path / "tsne.png")
    _assert_png(tmp_path / "tsne.png")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_tsne_handles_tiny_inputs(tmp_path, n):
    x = np.random.default_rng(0).normal(size=(n, 5))
    plot_tsne(x, np.arange(n) % 2, ["a", "b"], tmp_path / "tsne.png")
    _assert_png(tmp_path / "tsne.png", min_bytes=1000)


def test_stratified_subsample_keeps_every_class_in_proportion():
    y = np.array([0] * 900 + [1] * 95 + [2] * 5)
    keep = _stratified_subsample(y, 100, seed=0)
    counts = np.bincount(y[keep], minlength=3)
    assert counts.tolist() == [90, 10, 1]  # 95 * 0.1 = 9.5 rounds to 10; 0.5 rounds up to >= 1
    assert len(np.unique(keep)) == len(keep)
    assert np.array_equal(keep, _stratified_subsample(y, 100, seed=0))


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_writes_a_png(tmp_path, normalize):
    cm = classification_metrics([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], NAMES)["confusion_matrix"]
    plot_confusion(cm, NAMES, tmp_path / "confusion.png", normalize=normalize)
    _assert_png(tmp_path / "confusion.png")


def test_centroids_with_an_absent_class(tmp_path, clustered):
    sims = feature_metrics(*clustered, num_classes=4)["centroid_similarity"]
    plot_centroids(sims, [*NAMES, "absent"], tmp_path / "centroids.png")
    _assert_png(tmp_path / "centroids.png")


def test_curves_full_partial_and_empty(tmp_path):
    for name, events in [("full", _full_events()), ("partial", [{"step": 1, "loss": 2.0}])]:
        _write_metrics(tmp_path / f"{name}.jsonl", events)
        plot_curves(tmp_path / f"{name}.jsonl", tmp_path / f"{name}.png")
        _assert_png(tmp_path / f"{name}.png")
    (tmp_path / "empty.jsonl").write_text("")
    plot_curves(tmp_path / "empty.jsonl", tmp_path / "empty.png")
    _assert_png(tmp_path / "empty.png", min_bytes=1000)
    assert (tmp_path / "full.png").stat().st_size > (tmp_path / "partial.png").stat().st_size


def test_curves_reader(tmp_path):
    events = [
        {"step": 10, "split": "train", "loss": 3.0},
        {"step": 20, "split": "train", "loss": 2.0},
        {"step": 10, "split": "train", "loss": 2.5, "flag": True},  # resumed: re-logged step
        {"step": 20, "split": "val", "silhouette": None, "accuracy": 0.5},
        {"step": 30, "split": "other", "loss": 9.0},
        {"split": "train", "loss": 9.0},
    ]
    _write_metrics(tmp_path / "m.jsonl", events)
    series = _read_series(tmp_path / "m.jsonl")
    assert series[("train", "loss")] == {10: 2.5, 20: 2.0}
    assert series[("val", "accuracy")] == {20: 0.5}
    assert ("val", "silhouette") not in series and ("train", "flag") not in series
    assert not any(split == "other" for split, _ in series)


def _panel_of(panels, line):
    return next((title for title, _, lines in panels if line in lines), None)


def test_curves_share_an_axis_only_within_one_quantity(tmp_path):
    # The training "loss" is focal + weight x contrastive; the validation "loss" is the
    # cross-entropy of the predictions: one axis for both made a 3x gap out of equal accuracy.
    _write_metrics(tmp_path / "m.jsonl", _full_events())
    series = _read_series(tmp_path / "m.jsonl")
    panels = curve_panels(series)
    drawn = [line for _, _, lines in panels for line in lines]
    assert len(drawn) == len(set(drawn))  # each series drawn once
    assert _panel_of(panels, ("train", "loss")) != _panel_of(panels, ("val", "loss"))
    assert _panel_of(panels, ("train", "cls_loss")) != _panel_of(panels, ("val", "loss"))
    assert _panel_of(panels, ("val", "loss")) == "Validation cross-entropy"
    assert _panel_of(panels, ("train", "con_weight")) != _panel_of(panels, ("train", "temperature"))
    assert _panel_of(panels, ("val", "silhouette")) is None  # only None values were logged
    assert _panel_of(panels, ("val", "intra_sim")) == _panel_of(panels, ("val", "inter_sim"))
    # With a plain cross-entropy loss the training cls_loss is the validation loss's quantity.
    ce = curve_panels(series, train_ce=True)
    both = _panel_of(ce, ("val", "loss"))
    assert "Cross-entropy" in both
    assert {line for title, _, lines in ce if title == both for line in lines} == {
        ("train", "cls_loss"),
        ("val", "loss"),
    }
    plot_curves(tmp_path / "m.jsonl", tmp_path / "ce.png", train_ce=True)
    _assert_png(tmp_path / "ce.png")


def test_curves_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        plot_curves(tmp_path / "missing.jsonl", tmp_path / "c.png")
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "loss": 1}\n{oops\n')
    with pytest.raises(UserError, match="bad.jsonl line 2"):
        plot_curves(tmp_path / "bad.jsonl", tmp_path / "c.png")


def test_report_embeds_images_and_tables(tmp_path, clustered):
    y_pred = np.where(np.arange(90) % 7 == 0, (clustered[1] + 1) % 3, clustered[1])
    metrics = classification_metrics(clustered[1], y_pred, NAMES)
    plot_confusion(metrics["confusion_matrix"], NAMES, tmp_path / "confusion.png")
    images = {"Confusion matrix": tmp_path / "confusion.png", "t-SNE": tmp_path / "absent.png"}
    page = write_report(
        tmp_path / "eval" / "report.html", metrics, metrics["per_class"], images, "Run <demo>"
    ).read_text(encoding="utf-8")
    encoded = base64.b64encode((tmp_path / "confusion.png").read_bytes()).decode()
    assert f"data:image/png;base64,{encoded}" in page
    assert "t-SNE: not produced" in page
    assert f"<td>accuracy</td><td>{metrics['accuracy']:.4f}</td>" in page
    assert f"<td>{metrics['per_class']['负面']['f1']:.4f}</td>" in page
    assert "<td>负面</td>" in page and "Run &lt;demo&gt;" in page
    assert "confusion_matrix" not in page  # nested values are not dumped into the table
