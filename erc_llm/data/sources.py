"""One way to name data everywhere: a corpus name, a CSV/JSON/JSONL file, or a folder of split files.

`resolve_source("meld")`, `resolve_source("my/test.csv")`, `resolve_source("calls.jsonl")` and
`resolve_source("my_corpus/")` all give a `DataSource`: which file holds which split, in which format, and the
label set the data declares (if any). Rules:

* **Corpus name** (`meld`, `emorynlp`, `emorynlp-csv`): its files under the data folder.
* **File** (`.csv` MELD- or EmoryNLP-style, told apart by the header; `.json` EmoryNLP official; `.jsonl` one
  dialogue per line): a split word in the file name (`train`, `dev`/`valid`/`val`, `test`/`tst`, e.g.
  `test.csv`, `calls_dev.jsonl`, `train_sent_emo.csv`) names its split, and the files beside it with the other
  split words are the other splits. A file without a split word is one split that serves whatever split is
  asked for (labelling a file), but never two different splits of one run.
* **Folder**: every `.csv`/`.jsonl`/`.json` file in it whose name holds a split word.

Label sets (`resolve_labels`): a known name (`meld`, `emorynlp`, `iemocap`), a comma-separated list, or a
`.txt`/`.json` file; data may declare its own with `labels.txt` / `labels.json` beside the files or a first
JSONL line `{"labels": [...]}`. Without any, `DataSource.label_set_for` infers the set from the training split
(a known set when the labels fit it) and says so.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from erc_llm.data.errors import DataFormatError
from erc_llm.data.labels import LABEL_SETS, LabelSet
from erc_llm.data.schema import LoadedSplit

SPLIT_WORDS: dict[str, str] = {
    "train": "train", "training": "train", "trn": "train",
    "dev": "dev", "valid": "dev", "validation": "dev", "val": "dev",
    "test": "test", "tst": "test",
}
SPLIT_ORDER = ("train", "dev", "test")
DATA_SUFFIXES = (".csv", ".jsonl", ".json")
SIDECARS = ("labels.txt", "labels.json")
MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
EMORYNLP_COLUMNS = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
_FORMAT_LABELS = {"meld_csv": "meld", "emorynlp_csv": "emorynlp", "emorynlp_json": "emorynlp"}


class DataSourceError(ValueError):
    """A data source or label set could not be resolved; the message says what to pass instead."""


@dataclass(frozen=True)
class SplitSource:
    """One split file and how to read it."""

    path: Path
    fmt: str  # meld_csv | emorynlp_csv | emorynlp_json | jsonl


@dataclass
class DataSource:
    """What a data name resolved to: split files, formats, a corpus name and the declared label set."""

    spec: str  # what the user wrote
    name: str  # corpus name used in dialogue ids, metrics.json and index keys
    files: dict[str, SplitSource]  # split -> file
    single: SplitSource | None = None  # a file without a split word: serves any requested split
    label_set: LabelSet | None = None  # declared (corpus, --labels, sidecar, JSONL header); None = undeclared
    label_origin: str = ""
    corpus: str | None = None  # the known corpus name, when it is one
    data_dir: str | None = None

    @property
    def run_name(self) -> str:
        """The corpus name run folders record (metrics.json `corpus`): the known corpus name, else `name`."""
        return self.corpus or self.name

    @property
    def splits(self) -> list[str]:
        """Splits this source names (a single undeclared-split file: 'custom')."""
        if self.single is not None and not self.files:
            return ["custom"]
        return sorted(self.files, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9, s))

    def has_split(self, split: str) -> bool:
        """Whether a file is named for this split (a single split-less file has none)."""
        return split in self.files

    def split_source(self, split: str) -> SplitSource:
        """The file of a split; error naming what exists."""
        if split in self.files:
            return self.files[split]
        if self.single is not None:
            return self.single
        have = ", ".join(f"{s} ({f.path})" for s, f in self.files.items()) or "none"
        raise DataSourceError(f"{self.spec}: no {split!r} split (found: {have}); name split files "
                              "train/dev/test (e.g. my_dev.jsonl) or pass the file itself")

    def path(self, split: str) -> Path:
        """The file holding a split."""
        return self.split_source(split).path

    def load(self, split: str, label_set: LabelSet | None = None, skip_invalid: bool = False) -> LoadedSplit:
        """Read one split; labels are checked against `label_set`, else the declared set, else not at all."""
        from erc_llm.data.loaders import load_emorynlp_csv, load_emorynlp_json, load_jsonl, load_meld_csv

        source = self.split_source(split)
        labels = label_set or self.label_set
        if source.fmt == "jsonl":
            return load_jsonl(source.path, split=split, corpus=self.name, label_set=labels, skip_invalid=skip_invalid)
        reader: Callable[..., LoadedSplit] = {
            "meld_csv": load_meld_csv, "emorynlp_csv": load_emorynlp_csv, "emorynlp_json": load_emorynlp_json,
        }[source.fmt]
        return reader(source.path, split, label_set=labels, skip_invalid=skip_invalid, corpus=self.name)

    def require_distinct(self, splits: Iterable[str | None]) -> None:
        """Error when two different splits of one run would read the same file (train = test leakage)."""
        seen: dict[Path, str] = {}
        for split in splits:
            if split is None:
                continue
            path = self.path(split).resolve()
            if path in seen and seen[path] != split:
                raise DataSourceError(
                    f"{self.spec}: splits {seen[path]!r} and {split!r} would both read {path}; give a folder "
                    "of split files (train/dev/test.jsonl or .csv) or files named for their split")
            seen[path] = split

    def label_set_for(self, train: LoadedSplit | Sequence | None = None, warn: bool = True) -> LabelSet:
        """The declared label set, else one inferred from the labels in `train` (a LoadedSplit or dialogues)."""
        if self.label_set is not None:
            return self.label_set
        dialogues = train.dialogues if isinstance(train, LoadedSplit) else (train or [])
        found = Counter(u.label for d in dialogues for u in d if u.label is not None)
        if not found:
            raise DataSourceError(f"{self.spec}: no label set declared and no labelled utterance to infer one "
                                  f"from; {DECLARE_HINT}")
        inferred = infer_label_set(found, self.name, self.default_set())
        if warn:
            import sys

            print(f"note: {self.spec}: no label set declared; using {inferred.name!r} {list(inferred.labels)} "
                  f"from the training labels ({DECLARE_HINT})", file=sys.stderr)
        return inferred

    def default_set(self) -> LabelSet | None:
        """The known set a MELD/EmoryNLP-format file most likely uses."""
        fmts = {f.fmt for f in [*self.files.values(), *([self.single] if self.single else [])]}
        names = {_FORMAT_LABELS[f] for f in fmts if f in _FORMAT_LABELS}
        return LABEL_SETS[names.pop()] if len(names) == 1 else None


DECLARE_HINT = ("declare the label set with --labels NAME|a,b,c, a labels.txt beside the files, or a first JSONL line "
                '{"labels": [...]}')


def infer_label_set(found: Counter, name: str, preferred: LabelSet | None = None) -> LabelSet:
    """A known set the found labels fit (the format's own first, then an exact match), else the sorted labels."""
    labels = set(found)
    if preferred is not None and labels <= set(preferred.labels):
        return preferred
    for known in LABEL_SETS.values():
        if labels == set(known.labels):
            return known
    return LabelSet.from_labels(name, sorted(labels))


# ---- label sets ---------------------------------------------------------------------------------------------


def resolve_labels(spec: str | Sequence[str] | LabelSet | None, name: str = "custom") -> LabelSet | None:
    """A label set from a known name, a comma-separated list, a list, or a labels .txt/.json file."""
    if spec is None or isinstance(spec, LabelSet):
        return spec
    if not isinstance(spec, str):
        return _label_set_from_list(list(spec), name, "the label list")
    text = spec.strip()
    if not text:
        raise DataSourceError(f"empty label set; known: {sorted(LABEL_SETS)}, or a list like happy,sad,neutral")
    if text.lower() in LABEL_SETS:
        return LABEL_SETS[text.lower()]
    if "," not in text and Path(text).is_file():
        return read_label_file(Path(text), name)
    if "," in text:
        return _label_set_from_list(text.split(","), name, repr(spec))
    raise DataSourceError(f"unknown label set {spec!r}; known: {sorted(LABEL_SETS)}, a comma-separated list "
                          "(happy,sad,angry,neutral) or a labels.txt/labels.json file")


def _label_set_from_list(items: Sequence, name: str, where: str) -> LabelSet:
    """LabelSet from raw names, with errors for empty or duplicate names."""
    if not all(isinstance(item, str) for item in items):
        raise DataSourceError(f"{where}: labels must be strings, got {list(items)!r}")
    labels = [item.strip().lower() for item in items]
    if any(not label for label in labels):
        raise DataSourceError(f"{where}: empty label name in {list(items)!r}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DataSourceError(f"{where}: duplicate label(s) {duplicates}")
    if len(labels) < 2:
        raise DataSourceError(f"{where}: a label set needs at least two labels, got {labels}")
    return LabelSet(name=name, labels=tuple(labels))


def read_label_file(path: Path, name: str) -> LabelSet:
    """labels.txt (one label per line or comma-separated; '#' comments) or labels.json (a list, or
    {"labels": [...], "aliases": {raw: label}})."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, None, f"cannot read label file: {exc}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
        aliases = {}
        if isinstance(data, dict):
            aliases = data.get("aliases") or {}
            data = data.get("labels")
        if not isinstance(data, list):
            raise DataFormatError(path, None, 'expected a list of labels or {"labels": [...]}')
        base = _wrap(path, lambda: _label_set_from_list(data, name, "labels"))
        if not isinstance(aliases, dict) or any(str(v).lower() not in base.labels for v in aliases.values()):
            raise DataFormatError(path, None, f"'aliases' must map raw names to one of {list(base.labels)}")
        return LabelSet(base.name, base.labels, {str(k).strip().lower(): str(v).lower() for k, v in aliases.items()})
    items = [item for line in text.splitlines() for item in line.split("#", 1)[0].split(",") if item.strip()]
    return _wrap(path, lambda: _label_set_from_list(items, name, "labels"))


def _wrap(path: Path, make: Callable[[], LabelSet]) -> LabelSet:
    """Re-raise a label-list problem as a DataFormatError naming the file."""
    try:
        return make()
    except DataSourceError as exc:
        raise DataFormatError(path, None, str(exc).removeprefix("labels: ")) from None


def declared_labels(folder: Path, files: Iterable[SplitSource], name: str) -> tuple[LabelSet | None, str]:
    """The label set the data declares: a sidecar file in `folder`, else a `{"labels": [...]}` first JSONL line."""
    for sidecar in SIDECARS:
        if (folder / sidecar).is_file():
            return read_label_file(folder / sidecar, name), str(folder / sidecar)
    found: list[tuple[LabelSet, Path]] = []
    for source in files:
        if source.fmt == "jsonl":
            header = jsonl_label_header(source.path, name)
            if header is not None:
                found.append((header, source.path))
    if not found:
        return None, ""
    first, first_path = found[0]
    for other, path in found[1:]:
        if set(other.labels) != set(first.labels):
            raise DataFormatError(path, "line 1", f"declares labels {list(other.labels)}, but {first_path} "
                                                  f"declares {list(first.labels)}")
    return first, f"{first_path}, line 1"


def jsonl_label_header(path: Path, name: str) -> LabelSet | None:
    """The label set declared on a JSONL file's first non-empty line (`{"labels": [...]}`), if any."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    return parse_label_header(line, path, line_no, name)
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot read: {exc}") from None
    return None


def parse_label_header(line: str, path: Path, line_no: int, name: str) -> LabelSet | None:
    """A `{"labels": [...]}` line -> LabelSet; any other line -> None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or "labels" not in record or "utterances" in record:
        return None
    labels = record["labels"]
    if not isinstance(labels, list):
        raise DataFormatError(path, f"line {line_no}", '"labels" must be a list of label names')
    return _wrap(path, lambda: _label_set_from_list(labels, name, "labels"))


# ---- data sources -------------------------------------------------------------------------------------------


def split_of(path: str | os.PathLike) -> str | None:
    """The split a file name names ('test.csv', 'calls_dev.jsonl', 'emorynlp_train_final.csv'), else None."""
    words = {SPLIT_WORDS[w] for w in re.split(r"[^a-z0-9]+", Path(path).name.lower().split(".")[0]) if w in SPLIT_WORDS}
    return words.pop() if len(words) == 1 else None


def _name_without_split(path: Path) -> str:
    """Corpus name of a file: its stem without split words, else its folder's name."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.name.split(".")[0]) if w and w.lower() not in SPLIT_WORDS]
    words = [w for w in words if w.lower() not in ("sent", "emo", "final")]
    return "_".join(words).lower() or _slug(path.resolve().parent.name) or "custom"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def sniff_format(path: Path) -> str:
    """meld_csv | emorynlp_csv | emorynlp_json | jsonl, from the suffix and (CSV) the header."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "emorynlp_json"
    if suffix != ".csv":
        raise DataSourceError(f"{path}: unsupported file type {suffix or '(none)'!r}; give a .csv (MELD- or "
                              "EmoryNLP-style), .jsonl (one dialogue per line) or .json (EmoryNLP official) file")
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
            header = [h.strip() for h in next(csv.reader(handle), [])]
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot read: {exc}") from None
    except csv.Error as exc:
        raise DataFormatError(path, "1 (line 1)", f"unreadable header: {exc}") from None
    if not header:
        raise DataFormatError(path, None, "file is empty (no header row)")
    if all(c in header for c in MELD_COLUMNS):
        return "meld_csv"
    if all(c in header for c in EMORYNLP_COLUMNS):
        return "emorynlp_csv"
    missing_meld = [c for c in MELD_COLUMNS if c not in header]
    raise DataFormatError(path, "header", f"neither MELD-style (missing {missing_meld}) nor EmoryNLP-style "
                                          f"(needs {list(EMORYNLP_COLUMNS)}) CSV; found {header}")


def _split_files(folder: Path) -> dict[str, SplitSource]:
    """Split files in a folder, by the split word in their names; error on two files for one split."""
    files: dict[str, SplitSource] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in DATA_SUFFIXES or path.name in SIDECARS:
            continue
        split = split_of(path)
        if split is None:
            continue
        if split in files:
            raise DataSourceError(f"{folder}: two files for split {split!r}: {files[split].path.name} and "
                                  f"{path.name}; keep one")
        files[split] = SplitSource(path, sniff_format(path))
    return files


def _siblings(path: Path) -> dict[str, SplitSource]:
    """The other split files of a file named for its split (same name with the other split word)."""
    stem, suffix = path.name.split(".")[0], path.name[len(path.name.split(".")[0]):]
    parts = re.split(r"([^A-Za-z0-9]+)", stem)
    out: dict[str, SplitSource] = {}
    for i, part in enumerate(parts):
        if part.lower() not in SPLIT_WORDS:
            continue
        for word, split in SPLIT_WORDS.items():
            if split in out:
                continue
            for ext in dict.fromkeys([suffix, *DATA_SUFFIXES]):
                candidate = path.with_name("".join([*parts[:i], word, *parts[i + 1:]]) + ext)
                if candidate.is_file():
                    out[split] = SplitSource(candidate, sniff_format(candidate))
                    break
    return out


def resolve_source(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    labels: str | Sequence[str] | LabelSet | None = None,
    data_dir: str | os.PathLike | None = None,
) -> DataSource:
    """Resolve a corpus name, file or folder (see the module docstring) and its label set.

    `split`, when given, must be one the source can serve. `labels` (a name, list or file) overrides the
    declared set; if the data declares a different set of names, that is an error.
    """
    from erc_llm.data.corpora import CORPORA
    from erc_llm.paths import data_root

    spec = os.fspath(name_or_path).strip()
    if not spec:
        raise DataSourceError(f"no data given; name a corpus ({', '.join(sorted(CORPORA))}), a file or a folder")
    path = Path(spec).expanduser()
    if spec.lower() in CORPORA and "/" not in spec and os.sep not in spec:
        corpus = CORPORA[spec.lower()]
        root = data_root(data_dir)
        files = {s: SplitSource(root / f.relpath, f.fmt) for s, f in corpus.splits.items()}
        source = DataSource(spec, corpus.name, files, label_set=corpus.label_set,
                            label_origin=f"corpus {spec.lower()}", corpus=spec.lower(),
                            data_dir=None if data_dir is None else str(data_dir))
    elif path.is_dir():
        files = _split_files(path)
        if not files:
            raise DataSourceError(f"{path}: no split files found; expected train/dev/test files (.csv, .jsonl or "
                                  "official .json) named for their split, e.g. train.jsonl, dev.jsonl, test.jsonl")
        name = _slug(path.resolve().name) or "custom"
        declared, origin = declared_labels(path, files.values(), name)
        source = DataSource(spec, name, files, label_set=declared, label_origin=origin)
    elif path.is_file():
        fmt = sniff_format(path)
        own = split_of(path)
        name = _name_without_split(path)
        if own is not None:
            files = {own: SplitSource(path, fmt), **{k: v for k, v in _siblings(path).items() if k != own}}
            source = DataSource(spec, name, files)
        else:
            source = DataSource(spec, name, {}, single=SplitSource(path, fmt))
        all_files = [*source.files.values(), *([source.single] if source.single else [])]
        source.label_set, source.label_origin = declared_labels(path.parent, all_files, name)
    elif path.suffix.lower() in DATA_SUFFIXES or os.sep in spec or "/" in spec:
        raise DataFormatError(path, None, "file not found")
    else:
        raise DataSourceError(f"unknown corpus {spec!r} and no such file or folder; known corpora: "
                              f"{', '.join(sorted(CORPORA))} (files under $ERC_LLM_DATA_DIR), or a .csv/.jsonl "
                              "file or a folder of train/dev/test files")
    if labels is not None:
        given = resolve_labels(labels, name=source.name)
        if source.label_set is not None and source.corpus is None and set(given.labels) != set(source.label_set.labels):
            raise DataSourceError(f"{source.spec}: the labels given {list(given.labels)} differ from those "
                                  f"declared in {source.label_origin}: {list(source.label_set.labels)}")
        source.label_set, source.label_origin = given, "--labels"
    if split is not None:
        source.split_source(split)
    return source


def run_corpus_name(spec: str, data_dir: str | os.PathLike | None = None) -> str:
    """The corpus name a run on `spec` records, so that runs on one corpus named differently compare."""
    try:
        return resolve_source(spec, data_dir=data_dir).run_name
    except (DataSourceError, DataFormatError):
        return spec
