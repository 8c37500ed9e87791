"""One self-contained HTML page (eval/report.html): what was evaluated, metrics, per-class
report, the most confident mistakes, rows that could not be scored, and pictures."""

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

_CSS = """
body { font-family: -apple-system, "Segoe UI", "Noto Sans CJK SC", "Microsoft YaHei", sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("n/a" if value is None else str(value))


def _metrics_table(metrics: Mapping[str, object], header: str = "metric") -> str:
    # Only scalars; nested entries (per-class, confusion matrix) have their own sections.
    rows = [
        f"<tr><td>{html.escape(key)}</td><td>{_cell(value)}</td></tr>"
        for key, value in metrics.items()
        if value is None or isinstance(value, str | int | float)
    ]
    head = f"<tr><th>{html.escape(header)}</th><th>value</th></tr>"
    return f"<table>{head}" + "".join(rows) + "</table>"


def _per_class_table(per_class: Mapping[str, Mapping[str, object]]) -> str:
    columns: list[str] = []
    for entry in per_class.values():
        columns += [c for c in entry if c not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["#", "class", *columns])
    rows = [
        f"<tr><td>{i}</td><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_cell(entry.get(c))}</td>" for c in columns)
        + "</tr>"
        for i, (name, entry) in enumerate(per_class.items())
    ]
    return f"<table><tr>{head}</tr>" + "".join(rows) + "</table>"


def _rows_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A table with one column per key of the rows (in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = [
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    ]
    return f"<table><tr>{head}</tr>" + "".join(body) + "</table>"


def _unseen_section(unseen: Mapping[str, object]) -> list[str]:
    labels: Mapping[str, Sequence[int]] = unseen["labels"]
    unit = unseen.get("unit", "row")
    rows = [
        {
            "label": label,
            "rows": len(where),
            unit: ", ".join(map(str, where[:20])) + (", ..." if len(where) > 20 else ""),
        }
        for label, where in labels.items()
    ]
    return [
        "<h2>Not scored: labels never seen in training</h2>",
        f"<p>{unseen['count']} rows have a label that is not among the training labels; the "
        "metrics above are over the other rows.</p>",
        _rows_table(rows),
    ]


def _figure(caption: str, image: Path) -> str:
    if not Path(image).is_file():
        return f"<p>{html.escape(caption)}: not produced.</p>"
    data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(
    path: str | Path,
    metrics: Mapping[str, object],
    per_class: Mapping[str, Mapping[str, object]],
    images: Mapping[str, str | Path],
    title: str,
    meta: Mapping[str, object] | None = None,
    mistakes: Sequence[Mapping[str, object]] = (),
    unseen: Mapping[str, object] | None = None,
) -> Path:
    """Writes the page to `path` and returns it; PNGs are embedded, so it opens offline anywhere.

    `metrics`: scalar metrics (nested values are skipped); `per_class`: class name -> its scores,
    in label order; `images`: caption -> PNG path (a missing file is noted, not an error);
    `meta`: what was evaluated (run, checkpoint, data file, date, version); `mistakes`: the most
    confident wrong predictions, one mapping per row; `unseen`: {"count", "unit", "labels":
    label -> rows} of the rows not scored because training never saw their label.
    """
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        *([_metrics_table(meta, header="evaluated")] if meta else []),
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        "<h2>Per-class report</h2>",
        _per_class_table(per_class),
        *(_unseen_section(unseen) if unseen and unseen.get("count") else []),
        *(
            [f"<h2>The {len(mistakes)} most confident mistakes</h2>", _rows_table(mistakes)]
            if mistakes
            else []
        ),
        *(["<h2>Pictures</h2>"] if images else []),
        *(_figure(caption, Path(image)) for caption, image in images.items()),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
