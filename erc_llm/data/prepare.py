"""Fetch the public corpus files for real users and verify them (checksums and row/dialogue counts)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from erc_llm.data.corpora import CORPORA, load_split
from erc_llm.paths import DATA_DIR_ENV, data_root


@dataclass
class PreparedFile:
    """Outcome of preparing one split file."""

    corpus: str
    split: str
    path: Path
    action: str  # "present" | "downloaded"
    utterances: int
    dialogues: int


class PrepareError(RuntimeError):
    """A file could not be fetched or did not match what the corpus spec expects."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path) -> None:
    """Download a URL (http(s) or file://) to `target` atomically, with a progress bar."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, target)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PrepareError(f"could not fetch {url}: {exc}") from exc


def prepare(
    corpora: list[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    force: bool = False,
) -> list[PreparedFile]:
    """Make every split of `corpora` present under the data folder and verified.

    `mirror` replaces the public source with a base URL laid out like the data folder (e.g.
    `file:///path/to/copy`), which is how tests exercise the download path offline.
    """
    root = data_root(data_dir)
    results: list[PreparedFile] = []
    seen: set[str] = set()
    for corpus in corpora or ["meld", "emorynlp"]:
        spec = CORPORA[corpus]
        for split, split_file in spec.splits.items():
            target = root / split_file.relpath
            action = "present"
            if force or not target.exists():
                url = f"{mirror.rstrip('/')}/{split_file.relpath}" if mirror else split_file.url
                try:
                    _download(url, target)
                except PrepareError as exc:
                    raise PrepareError(
                        f"{exc}; without network, put the {corpus} files ({', '.join(sorted({f.relpath for f in spec.splits.values()}))}) "
                        f"under {root} yourself, or set {DATA_DIR_ENV} (or --data-dir) to a folder that has them"
                    ) from exc
                action = "downloaded"
            if split_file.relpath not in seen and split_file.sha256:
                digest = sha256_of(target)
                if digest != split_file.sha256:
                    raise PrepareError(
                        f"{target}: sha256 {digest} differs from the expected {split_file.sha256} "
                        "(a different release of the file?); remove it and prepare again"
                    )
            seen.add(split_file.relpath)
            loaded = load_split(corpus, split, root)
            if loaded.n_utterances != split_file.utterances or (
                split_file.dialogues and len(loaded.dialogues) != split_file.dialogues
            ):
                raise PrepareError(
                    f"{target}: {loaded.n_utterances} utterances / {len(loaded.dialogues)} dialogues, "
                    f"expected {split_file.utterances} / {split_file.dialogues}"
                )
            results.append(PreparedFile(corpus, split, target, action, loaded.n_utterances, len(loaded.dialogues)))
    return results


def copy_tree(source: Path, target: Path) -> None:
    """Copy a local data folder (for users who already have the files)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
