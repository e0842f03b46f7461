"""The corpora erc_llm knows: which file holds which split, its format, its expected size and source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from erc_llm.data.labels import EMORYNLP_LABELS, MELD_LABELS, LabelSet
from erc_llm.data.schema import LoadedSplit
from erc_llm.paths import data_root

MELD_REF = "2d2011b"
EMORYNLP_REF = "289b967a34556f0d86b52ea36571c2a0c90740ae"
_MELD_RAW = f"https://raw.githubusercontent.com/declare-lab/MELD/{MELD_REF}/data"
_EMORY_RAW = f"https://raw.githubusercontent.com/emorynlp/emotion-detection/{EMORYNLP_REF}/json"


@dataclass(frozen=True)
class SplitFile:
    """One split of a corpus: local relative path, reader format, expected size, public source."""

    relpath: str
    fmt: str
    utterances: int
    dialogues: int
    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus: its label set and split files."""

    name: str
    label_set: LabelSet
    splits: dict[str, SplitFile]
    note: str = ""


CORPORA: dict[str, CorpusSpec] = {
    "meld": CorpusSpec(
        name="meld",
        label_set=MELD_LABELS,
        splits={
            "train": SplitFile("meld/train.csv", "meld_csv", 9989, 1038, f"{_MELD_RAW}/MELD/train_sent_emo.csv",
                               "d2fa2d6529cf03cac2989efec05c9b27d8fd2f4c8fc5974c7ae88aa537fa02db"),
            "dev": SplitFile("meld/dev.csv", "meld_csv", 1109, 114, f"{_MELD_RAW}/MELD/dev_sent_emo.csv",
                             "2e89c6f8aa182d6f62f8c6331aece905ac7273ca4999660bfb5213e1d0370c1c"),
            "test": SplitFile("meld/test.csv", "meld_csv", 2610, 280, f"{_MELD_RAW}/MELD/test_sent_emo.csv",
                              "8d37103938f7067600839fe29d5a114a6cd1bcdafb75bec101e06464c5006888"),
        },
    ),
    # Published EmoryNLP numbers use the official JSON release; its train file is not available here, so
    # training uses the CSV train split, model selection the official dev and reporting the official test.
    "emorynlp": CorpusSpec(
        name="emorynlp",
        label_set=EMORYNLP_LABELS,
        splits={
            "train": SplitFile("emorynlp/train.csv", "emorynlp_csv", 7551, 659,
                               f"{_MELD_RAW}/emorynlp/emorynlp_train_final.csv",
                               "462c66c333783adb801836d12d1424f48489bef4fb8ddfec7fbb2f08ce8211d5"),
            "dev": SplitFile("emorynlp/official/dev.json", "emorynlp_json", 1344, 99,
                             f"{_EMORY_RAW}/emotion-detection-dev.json",
                             "177f0b8ae5442045ea60e6f7940e14b1a8c15c704201f01da1ba74943f99086e"),
            "test": SplitFile("emorynlp/official/test.json", "emorynlp_json", 1328, 85,
                              f"{_EMORY_RAW}/emotion-detection-tst.json",
                              "2da84b0bffbc9da2f3b9de8016c2d3ae5478e6ccb26d473313368373b427dedc"),
        },
        note="train: CSV release (7551); dev/test: official JSON (1344/1328), comparable with published results",
    ),
    # The reduced CSV dev/test: a secondary figure only (drops some utterances and scenes).
    "emorynlp-csv": CorpusSpec(
        name="emorynlp",
        label_set=EMORYNLP_LABELS,
        splits={
            "train": SplitFile("emorynlp/train.csv", "emorynlp_csv", 7551, 659,
                               f"{_MELD_RAW}/emorynlp/emorynlp_train_final.csv",
                               "462c66c333783adb801836d12d1424f48489bef4fb8ddfec7fbb2f08ce8211d5"),
            "dev": SplitFile("emorynlp/dev.csv", "emorynlp_csv", 954, 89,
                             f"{_MELD_RAW}/emorynlp/emorynlp_dev_final.csv",
                             "20edc9d5917fe705b17b849f7f288e495d4132a60353a6247c3800445bdf8734"),
            "test": SplitFile("emorynlp/test.csv", "emorynlp_csv", 984, 79,
                              f"{_MELD_RAW}/emorynlp/emorynlp_test_final.csv",
                              "dbc4b5638acd12c92a5f48def829e04f1c765cddffb4eedbe34216312e0d2d78"),
        },
        note="secondary: the reduced CSV dev/test; report official JSON test as the headline",
    ),
}


def get_corpus(name: str) -> CorpusSpec:
    """Spec of a known corpus."""
    try:
        return CORPORA[name.lower()]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(CORPORA)} "
                         "(or a .csv/.jsonl file or a folder of split files)") from None


def split_path(corpus: str, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Local path of one split file."""
    spec = get_corpus(corpus)
    if split not in spec.splits:
        raise ValueError(f"corpus {corpus!r} has no split {split!r}; splits: {list(spec.splits)}")
    return data_root(data_dir) / spec.splits[split].relpath


def load_split(
    corpus: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    label_set: LabelSet | None = None,
) -> LoadedSplit:
    """Load one split of a data source: a corpus name, a CSV/JSON/JSONL file or a folder of split files
    (see `erc_llm.data.sources.resolve_source`). Labels are checked against `label_set`, else the set the
    corpus or data declares, else not at all."""
    from erc_llm.data.sources import resolve_source

    return resolve_source(corpus, data_dir=data_dir).load(split, label_set=label_set, skip_invalid=skip_invalid)
