"""One self-contained HTML page (eval/report.html): metrics, per-class report and pictures."""

import base64
import html
from collections.abc import Mapping
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


def _metrics_table(metrics: Mapping[str, object]) -> str:
    # Only scalars; nested entries (per-class, confusion matrix) have their own sections.
    rows = [
        f"<tr><td>{html.escape(key)}</td><td>{_cell(value)}</td></tr>"
        for key, value in metrics.items()
        if value is None or isinstance(value, str | int | float)
    ]
    return "<table><tr><th>metric</th><th>value</th></tr>" + "".join(rows) + "</table>"


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
) -> Path:
    """Writes the page to `path` and returns it; PNGs are embedded, so it opens offline anywhere.

    `metrics`: scalar metrics (nested values are skipped); `per_class`: class name -> its scores,
    in label order; `images`: caption -> PNG path (a missing file is noted, not an error).
    """
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        "<h2>Per-class report</h2>",
        _per_class_table(per_class),
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
