"""benchmarks/quality.py --merge: one report of several runs' results, each run once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


META = {
    "name": "toy", "language": "en", "classes": 2, "rows": {"train": 8, "val": 2, "test": 2},
    "median_chars": 10.0, "minority_class": "b", "minority_share": 0.25,
    "description": "toy", "package": "toy==1",
}  # fmt: skip


def run(method: str, seed: int | None, accuracy: float) -> dict:
    record = {"dataset": "toy", "method": method, "accuracy": accuracy, "macro_f1": accuracy}
    return record | {"seed": seed, "wall_s": 1.0, "status": "ok", "steps": 10}


def result_file(path: Path, command: str, records: list[dict]) -> str:
    settings = {"command": command, "baseline_only": False, "machine": "m"}
    result = {"settings": settings, "datasets": {"toy": META}, "results": records}
    path.write_text(json.dumps(result))
    return str(path)


def test_merge_keeps_each_run_once_and_ranks_over_all(quality, tmp_path):
    base = run("tfidf+logreg", 0, 0.80)
    a = result_file(tmp_path / "a.json", "cmd a", [base, run("ce", 0, 0.7), run("ce", 1, 0.9)])
    # b repeats the baseline and ce seed 0 (a's are kept), and adds margin.
    b = result_file(tmp_path / "b.json", "cmd b", [base, run("ce", 0, 0.1), run("margin", 0, 0.85)])
    out = tmp_path / "both.md"
    assert quality.main(["--merge", a, "--merge", b, "--out", str(out)]) == 0
    merged = json.loads(out.with_suffix(".json").read_text())
    keys = [(r["method"], r["seed"]) for r in merged["results"]]
    assert keys == [("tfidf+logreg", 0), ("ce", 0), ("ce", 1), ("margin", 0)]
    assert merged["settings"]["command"].startswith("cmd a; cmd b; ")
    report = out.read_text()
    # ce's mean over its two seeds is 0.80, tied with the baseline; margin's 0.85 ranks first.
    assert "| toy | ce | 2/2 | 0.8000 ± 0.1414 |" in report
    ranks = report.split("| method | mean rank |")[1].splitlines()[2:5]
    assert [line.split(" | ")[:2] for line in ranks] == [
        ["| margin", "1.00"], ["| tfidf+logreg", "2.50"], ["| ce", "2.50"],
    ]  # fmt: skip


def test_merge_of_an_unreadable_file_exits_2(quality, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--merge", str(bad), "--out", str(tmp_path / "x.md")])
    assert exit_info.value.code == 2
    assert f"--merge {bad}: cannot read it as a quality.py result" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
