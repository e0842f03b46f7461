"""Dataset-wide speaker identity: one stable id per person across dialogues, splits and corpora.

Rules, applied in order to every raw speaker name (see README, "Speaker identity"):

1. Joint lines are split: MELD's "Monica and Rachel" -> two speakers. "Mr. and Mrs. X" is not split.
   A slash marks a role being played ("Joey/Drake", "Rachel/actress"): the person is the part before it.
2. Groups ("All", "#ALL#", "Both", "Everyone", "The Guys", "Her Friends", ...) get the id `group`.
3. Generic roles ("Woman", "The Waiter", "Nurse #1", "Fireman No. 2", "1st Customer", "Voice", ...) are
   not one person across dialogues: their id is scoped to the dialogue, `role:woman@meld/train/12`
   (or `role:woman` when no dialogue is given).
4. Names are matched on a key that ignores case, periods, hyphens and a parenthesised description
   ("Eric (photographer)" = "Eric").
5. The curated alias table (`speaker_aliases.json`, overridable) maps names to a canonical person, so the
   main cast keeps the same id whichever corpora a registry is built from (MELD "Monica" = EmoryNLP
   "Monica Geller").
6. A one-word name equal to the first name of exactly one known multi-word person maps to that person;
   when several share the first name, the most frequent wins if it has at least 3x the next one's lines.
7. The id is the slug of the canonical name (`monica_geller`), so ids do not depend on build order.

A registry is built from training splits. Resolving a name it has not seen gives `unknown` (the
documented id for unseen speakers at test time) unless `frozen=False`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from erc_llm.data.schema import Dialogue, Utterance

UNKNOWN_ID = "unknown"
GROUP_ID = "group"
SCHEMA = "erc_llm.speakers/1"

_GROUP_KEYS = {
    "all", "#all#", "both", "everyone", "everybody", "the guys", "guys", "kids", "the whole party",
    "her friends", "quartet", "the girls", "girls", "crowd", "the crowd", "audience", "people",
}
_ROLE_WORDS = {
    "woman", "man", "guy", "girl", "boy", "kid", "waiter", "waitress", "nurse", "doctor", "customer",
    "student", "teacher", "clerk", "receptionist", "voice", "host", "director", "stranger", "passerby",
    "singer", "leader", "judge", "policeman", "fireman", "janitor", "guard", "security guard", "tour guide",
    "flight attendant", "announcer", "intercom", "radio", "message", "commercial", "employee", "passenger",
    "minister", "producer", "actor", "actress", "interviewer", "friend", "lecturer", "supervisor",
    "scientist", "paleontologist", "hitchhiker", "stage manager", "stage director", "grandmother",
    "housekeeper", "dressmaker", "anchorwoman", "spokeswoman", "announcement", "tattoo artist", "best man",
    "wedding planner", "ticket agent", "casting director", "casting guy", "delivery guy", "drunk man",
    "hotel clerk", "front desk clerk", "female clerk", "female student", "airline employee", "gym employee",
    "kitchen worker", "sleep clinic worker", "ticket counter attendant", "hold voice", "soothing male voice",
    "tv announcer", "pbs volunteer", "professore clerk", "drunken gambler", "woman on train", "big bully",
    "little bully", "hypnosis tape", "an",
}
_ARTICLE = re.compile(r"^(the|a|an|another)\s+", re.IGNORECASE)
_NUMBERING = re.compile(r"(#\s*\d+|\bno\.?\s*\d+|\b\d+(st|nd|rd|th)\b|\b\d+\b)", re.IGNORECASE)
_PAREN = re.compile(r"\s*\([^)]*\)\s*")
_JOINT = re.compile(r"\s+(?:and|&)\s+", re.IGNORECASE)
_TITLE_ONLY = re.compile(r"^(mr|mrs|ms|dr|miss)\.?$", re.IGNORECASE)
_SUFFIX = re.compile(r"\b(sr|jr)\.?$", re.IGNORECASE)


def name_key(name: str) -> str:
    """Matching key: lowercase, no parenthesised description, no periods, hyphens as spaces."""
    name = _PAREN.sub(" ", name)
    name = name.replace(".", " ").replace("-", " ").replace("_", " ")
    return " ".join(name.lower().split())


def slug(name: str) -> str:
    """Stable id text for a canonical name."""
    return re.sub(r"[^a-z0-9]+", "_", name_key(name)).strip("_") or UNKNOWN_ID


def split_joint_name(raw: str) -> list[str]:
    """'Monica and Rachel' -> ['Monica', 'Rachel']; 'Joey/Drake' -> ['Joey']; 'Mr. and Mrs. Geller' kept whole."""
    name = " ".join(raw.split())
    if "/" in name:
        name = name.split("/", 1)[0].strip() or name
    parts = _JOINT.split(name)
    if len(parts) > 1 and not any(_TITLE_ONLY.match(p.strip()) for p in parts[:-1]):
        return [p.strip() for p in parts if p.strip()]
    return [name]


_GROUP_KEY_SET = {name_key(k) for k in _GROUP_KEYS}
_GROUP_PLURAL = re.compile(r"'s\s+(friends|sisters|brothers|parents|kids|guys)$", re.IGNORECASE)


def is_group(name: str) -> bool:
    """Whether a name denotes several people at once ("All", "The Guys", "Joey's Sisters")."""
    return name_key(name) in _GROUP_KEY_SET or name.strip() == "#ALL#" or bool(_GROUP_PLURAL.search(name.strip()))


def is_generic_role(name: str) -> bool:
    """Whether a name is a role ("Woman", "The Waiter", "Nurse #1"), not one person across dialogues."""
    stripped = _PAREN.sub(" ", name).strip()
    if _ARTICLE.match(stripped) or _NUMBERING.search(stripped):
        return True
    return name_key(stripped) in _ROLE_WORDS


def _load_default_aliases() -> dict[str, str]:
    """The curated alias table shipped with the package."""
    text = resources.files("erc_llm.data").joinpath("speaker_aliases.json").read_text(encoding="utf-8")
    return dict(json.loads(text)["aliases"])


@dataclass
class SpeakerInfo:
    """One person in the registry."""

    id: str
    name: str
    aliases: set[str] = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"id": self.id, "name": self.name, "aliases": sorted(self.aliases), "counts": dict(self.counts)}


class SpeakerRegistry:
    """Maps raw speaker names to dataset-wide ids (see module docstring for the rules)."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self.people: dict[str, SpeakerInfo] = {}
        self._by_key: dict[str, str] = {}
        self.alias_table = {name_key(k): v for k, v in (aliases if aliases is not None else _load_default_aliases()).items()}

    # ---- building -------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, sources: Iterable[Iterable[Dialogue]], aliases: Mapping[str, str] | None = None
    ) -> SpeakerRegistry:
        """Registry of every person speaking in `sources` (e.g. the training splits of several corpora)."""
        registry = cls(aliases)
        raw_counts: Counter = Counter()
        corpus_of: dict[str, Counter] = {}
        for dialogues in sources:
            for dialogue in dialogues:
                for utt in dialogue.utterances:
                    for raw in utt.speakers:
                        for name in split_joint_name(raw):
                            if is_group(name) or is_generic_role(name):
                                continue
                            raw_counts[name] += 1
                            corpus_of.setdefault(name, Counter())[f"{dialogue.corpus}/{dialogue.split}"] += 1
        # Canonical names first: alias targets and multi-word names, then one-word names attach to them.
        canonical: dict[str, str] = {}
        for name in raw_counts:
            target = registry.alias_table.get(name_key(name))
            if target:
                canonical[name] = target
            elif len(name_key(name).split()) > 1:
                canonical[name] = name
        full_counts: Counter = Counter()
        for name, target in canonical.items():
            full_counts[target] += raw_counts[name]
        for name in raw_counts:
            if name not in canonical:
                canonical[name] = registry._attach_first_name(name, full_counts) or name
        for name, target in sorted(canonical.items()):
            person = registry._person(target)
            person.aliases.add(name)
            person.counts.update(corpus_of[name])
            registry._by_key[name_key(name)] = person.id
        return registry

    def _person(self, canonical_name: str) -> SpeakerInfo:
        """Get or create the entry of a canonical name."""
        person_id = slug(canonical_name)
        if person_id not in self.people:
            self.people[person_id] = SpeakerInfo(id=person_id, name=canonical_name)
            self._by_key[name_key(canonical_name)] = person_id
        return self.people[person_id]

    @staticmethod
    def _attach_first_name(name: str, full_counts: Mapping[str, int]) -> str | None:
        """Rule 6: a one-word name -> the unique (or clearly dominant) multi-word person with that first name."""
        key = name_key(name)
        if len(key.split()) != 1:
            return None
        candidates = sorted(
            ((count, full) for full, count in full_counts.items()
             if len(name_key(full).split()) > 1 and name_key(full).split()[0] == key and not _SUFFIX.search(full)),
            reverse=True,
        )
        if len(candidates) == 1 or (len(candidates) > 1 and candidates[0][0] >= 3 * candidates[1][0]):
            return candidates[0][1]
        return None

    # ---- resolving ------------------------------------------------------------------------------------
    def resolve(self, name: str, dialogue_id: str | None = None, frozen: bool = True) -> str:
        """Id of one speaker name (a role-play slash is applied); `unknown` for an unseen person when frozen."""
        if "/" in name:
            name = split_joint_name(name)[0]
        if is_group(name):
            return GROUP_ID
        if is_generic_role(name):
            role = f"role:{slug(name)}"
            return f"{role}@{dialogue_id}" if dialogue_id else role
        key = name_key(name)
        if key in self._by_key:
            return self._by_key[key]
        target = self.alias_table.get(key)
        if target and name_key(target) in self._by_key:
            return self._by_key[name_key(target)]
        full_counts = {p.name: sum(p.counts.values()) for p in self.people.values()}
        attached = self._attach_first_name(name, full_counts)
        if attached:
            return self._by_key[name_key(attached)]
        if frozen:
            return UNKNOWN_ID
        person = self._person(target or name)
        person.aliases.add(name)
        self._by_key[key] = person.id
        return person.id

    def speaker_ids(self, utt: Utterance, frozen: bool = True) -> tuple[str, ...]:
        """Ids of everyone speaking an utterance (joint lines split), in order, without repeats."""
        ids: list[str] = []
        for raw in utt.speakers:
            for name in split_joint_name(raw):
                person = self.resolve(name, utt.dialogue_id, frozen=frozen)
                if person not in ids:
                    ids.append(person)
        return tuple(ids) or (UNKNOWN_ID,)

    def primary_id(self, utt: Utterance, frozen: bool = True) -> str:
        """Id of the first speaker of an utterance (the one whose history and biography are used)."""
        return self.speaker_ids(utt, frozen=frozen)[0]

    def name_of(self, speaker_id: str) -> str:
        """Display name of an id (roles and special ids are rendered readably)."""
        if speaker_id in self.people:
            return self.people[speaker_id].name
        if speaker_id.startswith("role:"):
            return speaker_id[5:].split("@", 1)[0].replace("_", " ")
        return speaker_id

    def __contains__(self, speaker_id: object) -> bool:
        return speaker_id in self.people

    def __len__(self) -> int:
        return len(self.people)

    # ---- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready form (sorted, so the same registry always serialises the same way)."""
        return {
            "schema": SCHEMA,
            "unknown_id": UNKNOWN_ID,
            "group_id": GROUP_ID,
            "alias_table": dict(sorted(self.alias_table.items())),
            "speakers": [self.people[k].to_dict() for k in sorted(self.people)],
        }

    def save(self, path: str | Path) -> None:
        """Write the registry as JSON, atomically."""
        from erc_llm.io import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping) -> SpeakerRegistry:
        """Inverse of `to_dict`."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a speaker registry (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        registry = cls(aliases={})
        registry.alias_table = dict(data.get("alias_table", {}))
        for item in data["speakers"]:
            person = SpeakerInfo(id=item["id"], name=item["name"], aliases=set(item["aliases"]),
                                 counts=Counter(item.get("counts", {})))
            registry.people[person.id] = person
            registry._by_key[name_key(person.name)] = person.id
            for alias in person.aliases:
                registry._by_key[name_key(alias)] = person.id
        return registry

    @classmethod
    def load(cls, path: str | Path) -> SpeakerRegistry:
        """Read a registry written by `save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return cls.from_dict(data)
