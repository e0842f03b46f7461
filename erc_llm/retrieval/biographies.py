"""Speaker biographies built from the training split only: a deterministic emotion profile per speaker and,
optionally, an LLM-written description (BiosERC-style), stored together as a versioned JSONL artefact.

File layout (`biographies.jsonl`): the first line is a header (`schema`, `version`, corpus, `source_splits`,
`registry_ids`, build `config`, `inputs_sha256` of the training lines and the registry, generator); every
further line is one speaker: id, name, line count, profile statistics, `profile_text`, and for LLM
biographies `llm_text`, the `llm_prompt` (chat messages) that produced it and `llm_status`. The profile is
the fallback whenever no LLM text exists. Nothing from dev/test is read: building refuses any dialogue
whose split is not `train`.

Training prompts must not see their own labels, so a store built with `training_folds=K` also holds K fold
biographies: the training dialogues are split by `training_fold` (sha256 of the dialogue id mod K; the map is
in the header as `dialogue_folds`) and fold k's records are built from the other folds only. `biography()`
serves a training dialogue of the store from its fold's records, anything else from the full-train records.
Fold records follow the full-train ones in the file, each with a `fold` field.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from erc_llm.context import LeakageError
from erc_llm.data.labels import LabelSet
from erc_llm.data.schema import Dialogue, Utterance
from erc_llm.data.speakers import SpeakerRegistry
from erc_llm.io import atomic_open
from erc_llm.retrieval.config import LLMBiographyConfig, ProfileConfig

SCHEMA_NAME = "erc_llm.biographies"
SCHEMA_VERSION = 2  # 2: fold biographies for training prompts
TRAIN_SPLITS = ("train",)
BIOGRAPHY_KINDS = ("profile", "llm")
FOLD_RULE = "sha256(dialogue id) mod training_folds"

TextGenerator = Callable[[list[list[dict[str, str]]]], list[str]]
"""Any batch text generator: chat prompts (lists of {role, content}) -> one reply per prompt."""


# ---- inputs --------------------------------------------------------------------------------------------------
def require_training_split(dialogues: Iterable[Dialogue], allowed: Sequence[str] = TRAIN_SPLITS) -> list[Dialogue]:
    """The dialogues as a list; raises `LeakageError` if any comes from a split other than `allowed`."""
    dialogues = list(dialogues)
    bad = sorted({d.split for d in dialogues} - set(allowed))
    if bad:
        raise LeakageError(
            f"biographies and retrieval indices are built from training data only; got split(s) {bad} "
            f"(allowed: {list(allowed)})"
        )
    return dialogues


def inputs_sha256(dialogues: Sequence[Dialogue], registry: SpeakerRegistry) -> str:
    """sha256 over every training line (dialogue, position, speakers, text, label) and the registry."""
    digest = hashlib.sha256()
    for dialogue in dialogues:
        for utt in dialogue.utterances:
            row = [dialogue.id, dialogue.split, utt.index, list(utt.speakers), utt.text, utt.label]
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    digest.update(json.dumps(registry.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def training_fold(dialogue_id: str, folds: int) -> int:
    """The fold of a training dialogue (`FOLD_RULE`): depends on its id only, not on the other dialogues."""
    return int(hashlib.sha256(dialogue_id.encode("utf-8")).hexdigest(), 16) % folds


def lines_by_speaker(dialogues: Sequence[Dialogue], registry: SpeakerRegistry) -> dict[str, list[Utterance]]:
    """Registry id -> that person's labelled lines in file order (a joint line counts for each speaker)."""
    found: dict[str, list[Utterance]] = {}
    for dialogue in dialogues:
        for utt in dialogue.utterances:
            if utt.label is None:
                continue
            for speaker_id in registry.speaker_ids(utt):
                if speaker_id in registry:
                    found.setdefault(speaker_id, []).append(utt)
    return dict(sorted(found.items()))


# ---- deterministic profile ---------------------------------------------------------------------------------
@dataclass
class SpeakerProfile:
    """Emotion statistics of one speaker over their training lines."""

    n_lines: int
    emotion_counts: dict[str, int]
    n_pairs: int  # consecutive pairs of the speaker's own lines within one dialogue
    n_same: int  # of those, pairs with the same emotion
    shift_counts: dict[str, int]  # "from>to" -> count, for pairs that change emotion
    characteristic: list[dict[str, Any]]  # {dialogue_id, index, text, label}


def corpus_label_shares(dialogues: Sequence[Dialogue], label_set: LabelSet) -> dict[str, float]:
    """Share of each label among all labelled training lines."""
    counts = Counter(u.label for d in dialogues for u in d if u.label is not None)
    total = sum(counts.values()) or 1
    return {label: counts[label] / total for label in label_set.labels}


def build_profile(
    utterances: Sequence[Utterance], label_set: LabelSet, shares: Mapping[str, float], config: ProfileConfig
) -> SpeakerProfile:
    """The profile of one speaker from their lines (in file order); see `ProfileConfig` for the rules."""
    order = {label: i for i, label in enumerate(label_set.labels)}
    counts = Counter(u.label for u in utterances)
    emotion_counts = {label: counts[label] for label in sorted(counts, key=lambda lab: (-counts[lab], order[lab]))}
    shifts: Counter = Counter()
    n_pairs = n_same = 0
    previous: Utterance | None = None
    for utt in utterances:
        if previous is not None and previous.dialogue_id == utt.dialogue_id:
            n_pairs += 1
            if previous.label == utt.label:
                n_same += 1
            else:
                shifts[f"{previous.label}>{utt.label}"] += 1
        previous = utt
    shift_counts = dict(sorted(shifts.items(), key=lambda kv: (-kv[1], kv[0])))
    n = len(utterances)
    lift = {label: (counts[label] / n) / max(shares.get(label, 0.0), 1e-9) for label in counts}
    characteristic: list[dict[str, Any]] = []
    taken: set[str] = set()
    for label in sorted(lift, key=lambda lab: (-lift[lab], order[lab])):
        if len(characteristic) >= config.num_characteristic:
            break
        best: Utterance | None = None
        for utt in utterances:
            words = len(utt.text.split())
            if utt.label != label or not config.min_words <= words <= config.max_words:
                continue
            if utt.text.lower() in taken:
                continue
            if best is None or words > len(best.text.split()):
                best = utt
        if best is not None:
            taken.add(best.text.lower())
            characteristic.append({"dialogue_id": best.dialogue_id, "index": best.index, "text": best.text,
                                   "label": label})
    return SpeakerProfile(n_lines=n, emotion_counts=emotion_counts, n_pairs=n_pairs, n_same=n_same,
                          shift_counts=shift_counts, characteristic=characteristic)


def render_profile(profile: SpeakerProfile, config: ProfileConfig) -> str:
    """The profile as a short text (no speaker name: the template says whose it is)."""
    n = profile.n_lines
    parts = [f"In training: {n} line{'s' if n != 1 else ''}."]
    shown = list(profile.emotion_counts.items())[: config.top_emotions]
    if shown:
        parts.append("Emotions: " + ", ".join(f"{label} {round(100 * c / n)}%" for label, c in shown) + ".")
    if profile.n_pairs >= 2:
        same = round(100 * profile.n_same / profile.n_pairs)
        text = f"Keeps the same emotion from one of their lines to the next {same}% of the time"
        changes = list(profile.shift_counts)[: config.top_shifts]
        if changes:
            text += "; most common changes: " + ", ".join(c.replace(">", " to ") for c in changes)
        parts.append(text + ".")
    if profile.characteristic:
        quotes = "; ".join(f"\"{c['text']}\" ({c['label']})" for c in profile.characteristic)
        parts.append(f"Characteristic lines: {quotes}.")
    return " ".join(parts)


# ---- records and store -------------------------------------------------------------------------------------
@dataclass
class BiographyRecord:
    """One speaker's biography: the profile (always) and an LLM-written text (when generated)."""

    speaker_id: str
    name: str
    n_lines: int
    profile: dict[str, Any]
    profile_text: str
    llm_text: str | None = None
    llm_prompt: list[dict[str, str]] | None = None
    llm_status: str | None = None  # "generated", "skipped: ...", "fallback: ..."

    def text(self, kind: str) -> str:
        """The biography of the requested kind; the profile when no LLM text exists."""
        if kind == "llm" and self.llm_text:
            return self.llm_text
        return self.profile_text


def _profile_records(dialogues: Sequence[Dialogue], registry: SpeakerRegistry, label_set: LabelSet,
                     config: ProfileConfig) -> dict[str, BiographyRecord]:
    """A profile record for every registry speaker with labelled lines in `dialogues`."""
    shares = corpus_label_shares(dialogues, label_set)
    records = {}
    for speaker_id, utterances in lines_by_speaker(dialogues, registry).items():
        profile = build_profile(utterances, label_set, shares, config)
        records[speaker_id] = BiographyRecord(
            speaker_id=speaker_id, name=registry.name_of(speaker_id), n_lines=profile.n_lines,
            profile=asdict(profile), profile_text=render_profile(profile, config),
        )
    return records


@dataclass
class BiographyStore:
    """All biographies of one corpus's training split, keyed by registry id; a `BiographySource`.

    `folds[k]` holds the records built without the training dialogues of fold k (`dialogue_folds` maps each
    training dialogue id to its fold); empty when built without `training_folds`.
    """

    header: dict[str, Any]
    records: dict[str, BiographyRecord] = field(default_factory=dict)
    kind: str = "profile"
    folds: list[dict[str, BiographyRecord]] = field(default_factory=list)
    dialogue_folds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in BIOGRAPHY_KINDS:
            raise ValueError(f"biography kind must be one of {BIOGRAPHY_KINDS}, got {self.kind!r}")
        self._fold_views: dict[int, BiographyStore] = {}

    def __contains__(self, speaker_id: object) -> bool:
        return speaker_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def text(self, speaker_id: str, kind: str | None = None) -> str | None:
        """Biography text of a known speaker (None if the id has none)."""
        record = self.records.get(speaker_id)
        return record.text(kind or self.kind) if record is not None else None

    def fold_of(self, dialogue: Dialogue) -> int | None:
        """The fold of a training dialogue this store was built from; None for any other dialogue."""
        if dialogue.split not in TRAIN_SPLITS or not self.folds:
            return None
        return self.dialogue_folds.get(dialogue.id)

    def for_dialogue(self, dialogue: Dialogue) -> BiographyStore:
        """The biographies a prompt for `dialogue` may show: for one of the store's training dialogues, those
        built without its fold (so without its own lines); for any other dialogue, the full-train ones."""
        fold = self.fold_of(dialogue)
        if fold is None:
            return self
        view = self._fold_views.get(fold)
        if view is None:
            view = BiographyStore({**self.header, "fold": fold}, self.folds[fold], self.kind)
            self._fold_views[fold] = view
        return view

    def biography(self, speaker_id: str, utterance: Utterance, dialogue: Dialogue) -> str | None:
        """`BiographySource`: the biography by global id (fold-wise for training dialogues, see `for_dialogue`);
        None for unseen speakers (see the retriever)."""
        return self.for_dialogue(dialogue).text(speaker_id)

    def with_kind(self, kind: str) -> BiographyStore:
        """The same records (and fold records) served as another kind."""
        return BiographyStore(self.header, self.records, kind, self.folds, self.dialogue_folds)

    # ---- building -------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        dialogues: Iterable[Dialogue],
        registry: SpeakerRegistry,
        label_set: LabelSet,
        corpus: str,
        profile_config: ProfileConfig | None = None,
        training_folds: int = 0,
    ) -> BiographyStore:
        """Deterministic profiles for every registry speaker with labelled lines in the training dialogues; with
        `training_folds=K` (0 or >= 2) also the K fold profiles for training prompts (module docstring)."""
        dialogues = require_training_split(dialogues)
        if training_folds == 1 or training_folds < 0:
            raise ValueError(f"training_folds must be 0 (off) or >= 2, got {training_folds}")
        cfg = profile_config or ProfileConfig()
        records = _profile_records(dialogues, registry, label_set, cfg)
        dialogue_folds = {d.id: training_fold(d.id, training_folds) for d in dialogues} if training_folds else {}
        folds = [_profile_records([d for d in dialogues if dialogue_folds[d.id] != k], registry, label_set, cfg)
                 for k in range(training_folds)]
        header = {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "corpus": corpus,
            "source_splits": sorted({d.split for d in dialogues}),
            "labels": list(label_set.labels),
            "kind": "profile",
            "registry_ids": sorted(registry.people),
            "n_speakers": len(records),
            "config": {"profile": asdict(cfg)},
            "inputs_sha256": inputs_sha256(dialogues, registry),
            "generator": None,
            "training_folds": training_folds,
            "fold_rule": FOLD_RULE if training_folds else None,
            "dialogue_folds": dialogue_folds,
        }
        return cls(header=header, records=records, folds=folds, dialogue_folds=dialogue_folds)

    def add_llm_biographies(
        self,
        dialogues: Iterable[Dialogue],
        registry: SpeakerRegistry,
        generate: TextGenerator,
        config: LLMBiographyConfig | None = None,
        generator_name: str = "custom",
        progress: bool = False,
    ) -> BiographyStore:
        """Ask `generate` (batched) for a biography of each speaker with enough lines; profiles stay the fallback.

        Fold records get their own LLM text, written from the lines of the other folds only (the fold's own
        profile and lines); a prompt shared by several records (a speaker absent from a fold) is generated once.
        """
        dialogues = require_training_split(dialogues)
        cfg = config or LLMBiographyConfig()
        sources = [(self.records, dialogues)] + [
            (fold_records, [d for d in dialogues if self.dialogue_folds.get(d.id) != k])
            for k, fold_records in enumerate(self.folds)
        ]
        todo: dict[str, list[BiographyRecord]] = {}  # prompt (JSON) -> every record asking it
        for records, source in sources:
            by_speaker = lines_by_speaker(source, registry)
            for speaker_id, record in records.items():
                lines = by_speaker.get(speaker_id, [])
                if len(lines) < cfg.min_lines:
                    record.llm_text, record.llm_prompt = None, None
                    record.llm_status = f"skipped: {len(lines)} training line(s) < min_lines {cfg.min_lines}"
                    continue
                record.llm_prompt = llm_biography_prompt(record, lines, cfg)
                todo.setdefault(json.dumps(record.llm_prompt, ensure_ascii=False), []).append(record)
        prompts = list(todo.values())
        batches = range(0, len(prompts), cfg.batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="LLM biographies", unit="batch")
        for start in batches:
            batch = prompts[start:start + cfg.batch_size]
            replies = generate([group[0].llm_prompt for group in batch])  # type: ignore[misc]
            if len(replies) != len(batch):
                raise RuntimeError(f"generator returned {len(replies)} replies for {len(batch)} prompts")
            for group, reply in zip(batch, replies):
                text = " ".join(str(reply or "").split())
                for record in group:
                    record.llm_text = text or None
                    record.llm_status = "generated" if text else "fallback: empty reply, profile used"
        self.kind = "llm"
        self.header = {**self.header, "kind": "llm", "generator": generator_name,
                       "config": {**self.header["config"], "llm": asdict(cfg)}}
        return self

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the JSONL artefact atomically (header line, then one speaker per line, sorted by id)."""
        path = Path(path)
        with atomic_open(path, "w") as handle:
            handle.write(json.dumps(self.header, ensure_ascii=False, sort_keys=True) + "\n")
            for speaker_id in sorted(self.records):
                handle.write(json.dumps(asdict(self.records[speaker_id]), ensure_ascii=False, sort_keys=True) + "\n")
            for fold, fold_records in enumerate(self.folds):
                for speaker_id in sorted(fold_records):
                    row = {"fold": fold, **asdict(fold_records[speaker_id])}
                    handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, kind: str | None = None) -> BiographyStore:
        """Read a store written by `save`; checks the schema name and version."""
        path = Path(path)
        with path.open(encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
        if not lines:
            raise ValueError(f"{path}: empty biography file")
        header = json.loads(lines[0])
        if header.get("schema") != SCHEMA_NAME or header.get("version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: not a biography store of schema {SCHEMA_NAME} v{SCHEMA_VERSION} "
                f"(found {header.get('schema')!r} v{header.get('version')!r}); rebuild it"
            )
        records: dict[str, BiographyRecord] = {}
        folds: list[dict[str, BiographyRecord]] = [{} for _ in range(int(header.get("training_folds") or 0))]
        for lineno, line in enumerate(lines[1:], start=2):
            try:
                row = json.loads(line)
                fold = row.pop("fold", None)
                record = BiographyRecord(**row)
                (records if fold is None else folds[fold])[record.speaker_id] = record
            except (TypeError, ValueError, IndexError, AttributeError) as exc:
                raise ValueError(f"{path}, line {lineno}: bad biography record: {exc}") from None
        return cls(header=header, records=records, kind=kind or header.get("kind", "profile"), folds=folds,
                   dialogue_folds=dict(header.get("dialogue_folds") or {}))


def llm_biography_prompt(
    record: BiographyRecord, lines: Sequence[Utterance], config: LLMBiographyConfig
) -> list[dict[str, str]]:
    """The chat prompt asking for one speaker's biography (lines evenly spaced over their training lines)."""
    n, m = len(lines), min(config.max_lines, len(lines))
    picks = sorted({round(i * (n - 1) / (m - 1)) for i in range(m)}) if m > 1 else [0]
    shown = []
    for i in picks:
        text = lines[i].text
        if len(text) > config.max_line_chars:
            text = text[: config.max_line_chars] + "..."
        shown.append(f'- "{text}" ({lines[i].label})')
    user = (
        f"Lines spoken by {record.name} in a TV series, each with the emotion annotators gave it:\n"
        + "\n".join(shown)
        + f"\n\nStatistics: {record.profile_text}\n\n"
        f"In two or three sentences, describe {record.name}: personality, usual mood, and how their emotions "
        f"tend to change during a conversation. Write plain prose; do not quote the lines."
    )
    return [
        {"role": "system", "content": "You write short, factual character notes about people in a TV series, "
                                      "based only on what they say."},
        {"role": "user", "content": user},
    ]
