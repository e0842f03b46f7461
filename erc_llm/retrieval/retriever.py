"""Per-utterance retrieval for prompts: the speaker's biography and k labelled training lines.

`ContextRetriever` implements both `BiographySource` and `DemonstrationSource` of the prompt builder:

* Biography: the stored biography of the speaker's registry id. A speaker without one (`unknown`, a generic
  role such as `role:waiter@meld/test/3`, or a person with no lines in this corpus's training split) gets,
  with `unseen_speaker_biography="nearest"`, the biography of the known speaker (with at least
  `neighbour_min_lines` training lines) whose speaker vector is closest to an embedding of what this speaker
  said in the dialogue *up to and including the target line* (their most recent lines, at most
  `PREFIX_CHARS` characters, oldest first); with `"none"`, no biography. The group id (`All`, `Both`) gets none.
  A target in one of the index's training dialogues gets the fold biographies built without its own dialogue
  (`BiographyStore.for_dialogue`): its speaker's own, or, when the speaker has no lines outside its fold, the
  nearest known speaker's fold biography (nearest by the full-train speaker vectors, among speakers with at
  least `neighbour_min_lines` lines outside the fold). So no training prompt quotes or counts its own line.
* Demonstrations: the k training lines nearest to the target line (or previous + target line), with their
  gold training labels; lines of the target's own dialogue are never used (at training time this also
  excludes the target itself), and repeated texts are shown once when `dedupe_demonstrations` is on.

Query embeddings are computed per dialogue in one batch (and reused from the index for training dialogues);
`warm(dialogues)` embeds many dialogues at once before a whole split is rendered.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from erc_llm.context import Demonstration
from erc_llm.data.schema import Dialogue, Utterance
from erc_llm.data.speakers import GROUP_ID, name_key
from erc_llm.retrieval.embed import TextEncoder, encode_unique, load_encoder
from erc_llm.retrieval.index import RetrievalIndex, demonstration_text

PREFIX_CHARS = 500


@dataclass
class Neighbour:
    """One retrieved row with its similarity."""

    row: int
    score: float


@dataclass
class _DialogueVectors:
    """Query vectors of one dialogue: per line for demonstrations, per line for unseen speakers' prefixes."""

    demo: np.ndarray
    prefix: dict[int, np.ndarray]
    demonstrations: dict[int, list[list[Neighbour]]] = field(default_factory=dict)  # k -> hits per position


def speaker_prefix_text(utterance: Utterance, dialogue: Dialogue, max_chars: int = PREFIX_CHARS) -> str:
    """What the target's (first) speaker said in the dialogue up to and including the target line (recent end)."""
    who = name_key(utterance.speakers[0]) if utterance.speakers else ""
    lines = [u.text for u in dialogue.utterances[: utterance.index + 1]
             if u.speakers and name_key(u.speakers[0]) == who and u.text.strip()]
    kept: list[str] = []
    size = 0
    for text in reversed(lines):
        if kept and size + len(text) > max_chars:
            break
        kept.append(text)
        size += len(text) + 1
    return "\n".join(reversed(kept)) or utterance.text


class ContextRetriever:
    """Biographies and demonstrations for prompts, from a `RetrievalIndex` (see module docstring)."""

    def __init__(self, index: RetrievalIndex, biography_kind: str = "profile",
                 unseen_speaker_biography: str = "nearest", encoder: TextEncoder | None = None,
                 max_cached_dialogues: int = 4096) -> None:
        if unseen_speaker_biography not in ("nearest", "none"):
            raise ValueError(f"unseen_speaker_biography must be 'nearest' or 'none', got {unseen_speaker_biography!r}")
        self.index = index
        self.config = index.config
        self.store = index.biographies.with_kind(biography_kind) if index.biographies is not None else None
        self.unseen_speaker_biography = unseen_speaker_biography
        self.mode = index.demonstration_query
        self._encoder = encoder
        self._cache: OrderedDict[tuple, _DialogueVectors] = OrderedDict()
        self._max_cached = max_cached_dialogues
        self._train_rows = {(r["dialogue_id"], r["index"]): i for i, r in enumerate(index.utterance_rows)}
        self._eligible_by_fold: dict[int | None, np.ndarray] = {}

    # ---- embeddings ------------------------------------------------------------------------------------
    @property
    def encoder(self) -> TextEncoder:
        """The index's embedding model (loaded on first use)."""
        if self._encoder is None:
            self._encoder = load_encoder(self.index.embedding_model, self.config.embedding_batch_size,
                                         self.config.max_seq_length)
        return self._encoder

    def _needs_prefix(self, utt: Utterance, dialogue: Dialogue) -> bool:
        """Whether an utterance's speaker has no biography its prompt may show (so nearest-speaker lookup applies)."""
        if self.store is None or self.index.speaker_index is None or self.unseen_speaker_biography == "none":
            return False
        speaker_id = self.index.registry.primary_id(utt)
        return speaker_id != GROUP_ID and speaker_id not in self.store.for_dialogue(dialogue)

    def _eligible(self, fold: int | None) -> np.ndarray:
        """Mask over `index.speaker_ids`: speakers offered as nearest known profile with the records of `fold`
        (None: the full-train records), i.e. with at least `neighbour_min_lines` lines there."""
        mask = self._eligible_by_fold.get(fold)
        if mask is None:
            assert self.store is not None
            records = self.store.records if fold is None else self.store.folds[fold]
            mask = np.array([records[s].n_lines >= self.config.neighbour_min_lines if s in records else False
                             for s in self.index.speaker_ids], dtype=bool)
            self._eligible_by_fold[fold] = mask
        return mask

    @staticmethod
    def _cache_key(dialogue: Dialogue) -> tuple:
        """Cache key of a dialogue: its id and content (speakers, texts), so an edited copy is embedded anew."""
        return (dialogue.id, dialogue.split, tuple((u.speakers, u.text) for u in dialogue.utterances))

    def warm(self, dialogues: Iterable[Dialogue]) -> None:
        """Embed the query texts of many dialogues in one batch (cached for later per-utterance calls)."""
        todo = list({self._cache_key(d): d for d in dialogues if self._cache_key(d) not in self._cache}.values())
        if not todo:
            return
        dim = self.index.utterance_index.dim if self.index.utterance_index is not None else 0
        built: list[_DialogueVectors] = []
        jobs: list[tuple[int, str, int]] = []  # (position in todo, "demo"|"prefix", line position)
        texts: list[str] = []
        for slot, dialogue in enumerate(todo):
            stored = self._stored_vectors(dialogue)
            built.append(_DialogueVectors(stored if stored is not None else np.zeros((len(dialogue), dim), np.float32),
                                          {}))
            if stored is None and self.index.utterance_index is not None:
                for utt in dialogue.utterances:
                    jobs.append((slot, "demo", utt.index))
                    texts.append(demonstration_text(dialogue, utt.index, self.mode))
            for utt in dialogue.utterances:
                if self._needs_prefix(utt, dialogue):
                    jobs.append((slot, "prefix", utt.index))
                    texts.append(speaker_prefix_text(utt, dialogue))
        vectors = encode_unique(self.encoder, texts) if texts else np.zeros((0, 1), np.float32)
        for (slot, what, position), vector in zip(jobs, vectors):
            if what == "demo":
                built[slot].demo[position] = vector
            else:
                built[slot].prefix[position] = vector
        for dialogue, dialogue_vectors in zip(todo, built):
            self._remember(self._cache_key(dialogue), dialogue_vectors)

    def _stored_vectors(self, dialogue: Dialogue) -> np.ndarray | None:
        """Demonstration query vectors of a training dialogue taken from the index, if every line is there."""
        if dialogue.split != "train" or self.index.utterance_vectors is None:
            return None
        rows = [self._train_rows.get(u.key) for u in dialogue.utterances]
        if any(r is None or self.index.utterance_rows[r]["text"] != u.text for r, u in zip(rows, dialogue)):
            return None
        return self.index.utterance_vectors[rows]

    def _remember(self, key: tuple, vectors: _DialogueVectors) -> None:
        """Put a dialogue's vectors in the bounded cache."""
        self._cache[key] = vectors
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)

    def _vectors(self, dialogue: Dialogue) -> _DialogueVectors:
        """Cached query vectors of a dialogue (embedded on first use)."""
        key = self._cache_key(dialogue)
        if key not in self._cache:
            self.warm([dialogue])
        self._cache.move_to_end(key)
        return self._cache[key]

    # ---- biographies -----------------------------------------------------------------------------------
    def nearest_speakers(self, vector: np.ndarray, k: int = 1, eligible_only: bool = True,
                         fold: int | None = None) -> list[Neighbour]:
        """Known speakers closest to a query vector (rows of `index.speaker_ids`); `eligible_only` keeps those
        with enough lines in the full-train records, or in those of `fold`."""
        if self.index.speaker_index is None or (eligible_only and self.store is None):
            return []
        eligible = self._eligible(fold) if eligible_only else None
        scores, rows = self.index.speaker_index.search(vector, self.index.speaker_index.ntotal)
        found = [Neighbour(int(r), float(s)) for s, r in zip(scores[0], rows[0])
                 if r >= 0 and (eligible is None or eligible[r])]
        return found[:k]

    def nearest_known_speaker(self, utterance: Utterance, dialogue: Dialogue) -> tuple[str, float] | None:
        """(speaker id, similarity) of the closest known profile to what this speaker has said so far (for a
        training dialogue: closest among the speakers known without its fold)."""
        vectors = self._vectors(dialogue)
        vector = vectors.prefix.get(utterance.index)
        if vector is None:
            vector = self.encoder.encode([speaker_prefix_text(utterance, dialogue)])[0]
            vectors.prefix[utterance.index] = vector
        fold = self.store.fold_of(dialogue) if self.store is not None else None
        best = self.nearest_speakers(vector, 1, fold=fold)
        return (self.index.speaker_ids[best[0].row], best[0].score) if best else None

    def biography(self, speaker_id: str, utterance: Utterance, dialogue: Dialogue) -> str | None:
        """`BiographySource`: the speaker's own biography, else the nearest known one (or None, see docstring)."""
        if self.store is None:
            return None
        store = self.store.for_dialogue(dialogue)
        own = store.text(speaker_id)
        if own is not None:
            return own
        if speaker_id == GROUP_ID or self.unseen_speaker_biography == "none" or self.index.speaker_index is None:
            return None
        match = self.nearest_known_speaker(utterance, dialogue)
        if match is None:
            return None
        neighbour_id, _ = match
        name = store.records[neighbour_id].name
        return f"Not seen in training; speaks most like {name}, whose profile is: {store.text(neighbour_id)}"

    # ---- demonstrations --------------------------------------------------------------------------------
    def nearest_lines(self, queries: np.ndarray, k: int, exclude_dialogues: Sequence[str | None] | None = None,
                      dedupe: bool | None = None) -> list[list[Neighbour]]:
        """The k nearest training lines per query vector, skipping lines of the excluded dialogue (per query)."""
        index = self.index.utterance_index
        if index is None:
            raise RuntimeError("this retrieval index has no utterance part (built without demonstrations)")
        queries = np.atleast_2d(queries)
        excluded = list(exclude_dialogues) if exclude_dialogues is not None else [None] * len(queries)
        dedupe = self.config.dedupe_demonstrations if dedupe is None else dedupe
        results: list[list[Neighbour] | None] = [None] * len(queries)
        fetch = min(index.ntotal, 4 * k + 16)
        pending = list(range(len(queries)))
        while pending:
            scores, rows = index.search(queries[pending], fetch)
            still = []
            for q, score_row, id_row in zip(pending, scores, rows):
                found = self._filter(score_row, id_row, k, excluded[q], dedupe)
                if len(found) >= k or fetch >= index.ntotal:
                    results[q] = found
                else:
                    still.append(q)
            pending, fetch = still, min(index.ntotal, fetch * 4)
        return [r or [] for r in results]

    def _filter(self, scores: np.ndarray, rows: np.ndarray, k: int, excluded: str | None,
                dedupe: bool) -> list[Neighbour]:
        """Search hits minus the excluded dialogue (and repeated texts), at most k."""
        found: list[Neighbour] = []
        seen: set[str] = set()
        for score, row in zip(scores, rows):
            if row < 0:
                continue
            record = self.index.utterance_rows[row]
            if record["dialogue_id"] == excluded:
                continue
            if dedupe:
                key = " ".join(record["text"].lower().split())
                if key in seen:
                    continue
                seen.add(key)
            found.append(Neighbour(int(row), float(score)))
            if len(found) == k:
                break
        return found

    def demonstration(self, row: int) -> Demonstration:
        """A training line as a `Demonstration`."""
        record = self.index.utterance_rows[row]
        return Demonstration(speaker=record["speaker"], text=record["text"], label=record["label"],
                             dialogue_id=record["dialogue_id"], index=record["index"])

    def demonstrations(self, utterance: Utterance, dialogue: Dialogue, k: int) -> list[Demonstration]:
        """`DemonstrationSource`: k labelled training lines nearest to the target, none from its dialogue."""
        vectors = self._vectors(dialogue)
        if k not in vectors.demonstrations:  # one batched search for every line of the dialogue
            vectors.demonstrations[k] = self.nearest_lines(vectors.demo, k, [dialogue.id] * len(dialogue))
        return [self.demonstration(h.row) for h in vectors.demonstrations[k][utterance.index]]

    def knn_labels(self, dialogues: Sequence[Dialogue], k: int = 10) -> dict[tuple[str, int], str]:
        """A model-free prediction per utterance: similarity-weighted vote of its k nearest training lines
        (other dialogues only; ties go to the earlier label in label order). Used where a stand-in for a
        model's predictions is needed (e.g. the emotion history in `erc-llm prompts show`)."""
        self.warm(dialogues)
        labels = list(self.index.manifest.get("labels", []))
        keys, vectors, excluded = [], [], []
        for dialogue in dialogues:
            demo = self._vectors(dialogue).demo
            for utt in dialogue.utterances:
                keys.append(utt.key)
                vectors.append(demo[utt.index])
                excluded.append(dialogue.id)
        if not keys:
            return {}
        hits = self.nearest_lines(np.stack(vectors), k, excluded, dedupe=False)
        rank = {label: i for i, label in enumerate(labels)}
        predictions = {}
        for key, found in zip(keys, hits):
            votes: Counter = Counter()
            for h in found:
                votes[self.index.utterance_rows[h.row]["label"]] += max(h.score, 0.0)
            predictions[key] = max(votes, key=lambda lab: (votes[lab], -rank.get(lab, 0))) if votes else labels[0]
        return predictions
