"""SearchQA-Synth: a seeded fictional world, written as a wiki-18 corpus plus QA.

Every name is invented from syllables, so no pretrained model can know a single fact of
this world: an agent can only answer by searching. The world has people, cities,
countries, organisations and works (novels, films, albums) tied by relations (a person's
birthplace and employer, an organisation's founder and headquarters, ...). Each fact is
written with one fixed sentence template per relation (``FACT_TEMPLATES``), which is
what lets :func:`extract_fact` (and so the scripted oracle) read it back.

Questions take 1 to 3 hops (``single``, ``bridge``) or compare two entities
(``comparison``); ``QAExample.metadata["hops"]`` holds the gold reasoning path with the
passage that states each hop. Near-namesake passages and passages that merely mention an
entity act as distractors.

Generation is O(number of entities): entity records are planned in memory as compact
arrays, and passages and questions are rendered lazily (:meth:`SynthWorld.iter_passages`,
:meth:`SynthWorld.iter_questions`), so :func:`write_corpus` and :func:`write_qa` stream.
The same config always gives byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
from array import array
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from search_env.rewards import normalize
from search_env.types import Passage, QAExample

FORMAT_VERSION = 1
"""Bumped whenever generation changes, so that :func:`build_cached` rebuilds."""

QUESTION_TYPES = ("single", "bridge2", "bridge3", "comparison")


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic world; everything is derived from ``seed``."""

    seed: int = 0
    """Seed of every random choice; same config and seed give byte-identical files."""
    num_entities: int = 400
    """Entities in the world (about 53% people); scales corpus and questions linearly."""
    distractors_per_entity: float = 1.0
    """Expected distractor passages (near-namesakes, mentions) per entity."""
    test_fraction: float = 0.2
    """Probability that a question touching no held-out entity goes to ``test``."""
    heldout_entity_fraction: float = 0.1
    """Fraction of entities held out: a question involving one (in any hop) is test-only."""
    questions_per_entity: float = 1.0
    """Expected questions anchored on each entity (duplicates are dropped)."""
    question_mix: tuple[float, float, float, float] = (0.35, 0.3, 0.15, 0.2)
    """Relative weights of single-hop, 2-hop bridge, 3-hop bridge and comparison."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if isinstance(self.num_entities, bool) or not isinstance(self.num_entities, int):
            raise ValueError(f"num_entities must be an int, got {self.num_entities!r}")
        if self.num_entities < 20:
            raise ValueError(f"num_entities must be >= 20, got {self.num_entities}")
        _check_float("distractors_per_entity", self.distractors_per_entity, 0.0, math.inf)
        _check_float("test_fraction", self.test_fraction, 0.0, 1.0)
        _check_float("heldout_entity_fraction", self.heldout_entity_fraction, 0.0, 1.0)
        _check_float("questions_per_entity", self.questions_per_entity, 0.0, math.inf)
        if self.questions_per_entity <= 0:
            raise ValueError("questions_per_entity must be > 0")
        mix = tuple(self.question_mix)
        if len(mix) != 4:
            raise ValueError(f"question_mix needs 4 weights {QUESTION_TYPES}, got {mix!r}")
        for w in mix:
            _check_float("question_mix weight", w, 0.0, math.inf)
        if sum(mix) <= 0:
            raise ValueError("question_mix weights must not all be zero")
        object.__setattr__(self, "question_mix", tuple(float(w) for w in mix))


def _check_float(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (lo <= value <= hi) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")


# --------------------------------------------------------------------------- vocabulary

PERSON, CITY, COUNTRY, ORG, WORK = range(5)
KIND_NAMES = ("person", "city", "country", "organisation", "work")
_KIND_SHARE = {COUNTRY: 0.02, CITY: 0.13, ORG: 0.12, WORK: 0.20}  # people take the rest

_SYLLABLES = (
    "vel", "or", "in", "quas", "tad", "trel", "zar", "eth", "mir", "bal", "dor", "ka",
    "len", "ris", "tho", "ven", "sa", "lu", "mar", "bre", "nos", "ulm", "fa", "gar",
    "ith", "ost", "pel", "ran", "sil", "tor", "vi", "wen", "yar", "zel", "cor", "dra",
    "fen", "har", "ix", "jor", "kel", "lor", "nim", "oth", "pra", "sev", "tun", "val",
    "rhe", "ast", "bel", "cai", "dun", "ery", "gly", "hol", "isk", "kov", "mev", "ny",
    "pim", "qua", "rov", "syl", "tev", "ur", "vo", "wyr", "xe", "zu",
)
_CITY_SUFFIXES = ("mont", "holm", "dale", "grad", "burg", "ford", "haven", "port", "wick")
_COUNTRY_SUFFIXES = ("ia", "land", "ora", "istan", "ovia", "aria", "enn")
_COUNTRY_ALIASES = ("Republic of {}", "Kingdom of {}", "Federation of {}", "Commonwealth of {}")
_ORG_TYPES = (
    ("Dynamics", "engineering"), ("Holdings", "finance"), ("Shipworks", "shipbuilding"),
    ("Press", "publishing"), ("Analytics", "data analysis"), ("Foundry", "metalworking"),
    ("Institute", "research"), ("Records", "music"), ("Studios", "film"),
    ("Textiles", "textiles"), ("Mining", "mining"), ("Airways", "aviation"),
    ("Bank", "banking"), ("Pharmaceuticals", "medicine"), ("Motors", "automobiles"),
)
_ORG_ALIAS_SUFFIXES = ("Group", "Company", "Ltd.", "Inc.")
_WORK_KINDS = ("novel", "film", "album")
_WORK_VERBS = ("wrote", "directed", "recorded")
_WORK_CREATORS = ("author", "director", "performer")
_ADJECTIVES = (
    "Amber", "Silent", "Hollow", "Crimson", "Last", "Distant", "Bitter", "Golden", "Pale",
    "Broken", "Winter", "Hidden", "Burning", "Quiet", "Iron", "Glass", "Seventh", "Lonely",
)
_NOUNS = (
    "Gate", "River", "Lantern", "Harbour", "Orchard", "Mirror", "Tower", "Letter", "Garden",
    "Crown", "Bridge", "Voyage", "Song", "Shadow", "Archive", "Compass", "Feast", "Wall",
)
OCCUPATIONS = (
    "painter", "engineer", "novelist", "architect", "physician", "composer", "botanist",
    "merchant", "sculptor", "astronomer", "diplomat", "film director", "cartographer",
    "economist", "poet", "chemist", "journalist", "violinist", "lawyer", "historian",
)
_GOODS = ("salt", "timber", "wool", "copper", "amber", "tea", "glassware", "silk", "grain")
_TOPICS = ("river trade", "coinage", "map making", "poetry", "shipbuilding", "astronomy")


def _word(rng: random.Random, lo: int, hi: int) -> str:
    n = lo + int(rng.random() * (hi - lo + 1))
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()


def invented_name(rng: random.Random) -> str:
    """A random invented person-like name such as ``"Velorin Quastad"``."""
    return f"{_word(rng, 2, 3)} {_word(rng, 2, 3)}"


def _make_name(kind: int, rng: random.Random) -> str:
    if kind == PERSON:
        return invented_name(rng)
    if kind == CITY:
        word = _word(rng, 2, 3)
        return word + rng.choice(_CITY_SUFFIXES) if rng.random() < 0.5 else word
    if kind == COUNTRY:
        return _word(rng, 1, 2) + rng.choice(_COUNTRY_SUFFIXES)
    if kind == ORG:
        return f"{_word(rng, 2, 3)} {rng.choice(_ORG_TYPES)[0]}"
    w, adj, noun = _word(rng, 2, 3), rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
    pattern = int(rng.random() * 5)
    return (
        f"The {adj} {noun} of {w}",
        f"{w}'s {noun}",
        f"The {w} {noun}",
        f"{noun}s of {w}",
        f"A {noun} for {w}",
    )[pattern]


_VOWELS = "aeiouy"


def _near_name(name: str, rng: random.Random) -> str:
    """``name`` with one vowel changed or one letter doubled: a near-namesake."""
    positions = [i for i, c in enumerate(name) if i > 0 and c in _VOWELS and name[i - 1] != " "]
    if not positions or rng.random() < 0.25:
        i = 1 + int(rng.random() * (len(name) - 1))
        if not name[i].isalpha():
            return name + "e"
        return name[:i] + name[i] + name[i:]
    i = rng.choice(positions)
    return name[:i] + rng.choice([v for v in _VOWELS if v != name[i]]) + name[i + 1 :]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


# --------------------------------------------------------------------------- relations


@dataclass(frozen=True)
class Relation:
    """How one relation is stored, stated, queried and asked about."""

    name: str
    subject_kinds: tuple[int, ...]
    object_kind: int | None
    """Kind of the object entity; None for a literal (a year or an occupation)."""
    template: str
    """The one sentence that states the fact: ``{S}`` subject, ``{O}`` object."""
    query: str
    """A good search query for the fact, ``{S}`` being the subject's name."""
    question: str
    """The question asking for the object of ``{P}`` (a name or a noun phrase)."""
    phrase: str | None
    """Noun phrase for the object, used inside multi-hop questions."""
    passage: int = 0
    """Which of the subject's passages states the fact (people have two)."""


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("birth_year", (PERSON,), None, "{S} was born in the year {O}.",
                 "{S} born in year", "In what year was {P} born?", None),
        Relation("birthplace", (PERSON,), CITY, "{S} was born in the city of {O}.",
                 "{S} born in city", "In which city was {P} born?", "the birthplace of {P}"),
        Relation("occupation", (PERSON,), None, "{S} worked as {a} {O}.",
                 "{S} occupation worked as", "What was the occupation of {P}?", None, 1),
        Relation("employer", (PERSON,), ORG, "{S} was employed by {O}.",
                 "{S} employed by", "Which organisation employed {P}?",
                 "the employer of {P}", 1),
        Relation("spouse", (PERSON,), PERSON, "{S} was married to {O}.",
                 "{S} married to", "Who was {P} married to?", "the spouse of {P}", 1),
        Relation("country", (CITY,), COUNTRY, "{S} is a city in {O}.",
                 "{S} city in country", "In which country is {P} located?",
                 "the country of {P}"),
        Relation("capital", (COUNTRY,), CITY, "The capital of {S} is {O}.",
                 "capital of {S}", "What is the capital of {P}?", "the capital of {P}"),
        Relation("founder", (ORG,), PERSON, "{S} was founded by {O}.",
                 "{S} founded by", "Who founded {P}?", "the founder of {P}"),
        Relation("headquarters", (ORG,), CITY, "{S} is headquartered in {O}.",
                 "{S} headquartered in", "In which city is {P} headquartered?",
                 "the headquarters of {P}"),
        Relation("founded_year", (CITY, COUNTRY, ORG), None, "{S} was founded in {O}.",
                 "{S} founded in year", "In what year was {P} founded?", None),
        Relation("creator", (WORK,), PERSON, "{S} is {a} {kind} by {O}.",
                 "{S} {kind} by", "Who {verb} {P}?", "the {creator} of {P}"),
        Relation("release_year", (WORK,), None, "{S} was released in {O}.",
                 "{S} released in year", "In what year was {P} released?", None),
    )
}
FACT_TEMPLATES: dict[str, str] = {name: r.template for name, r in RELATIONS.items()}
"""The sentence stating each relation; :func:`extract_fact` reads these back."""

_KIND_RELATIONS: dict[int, tuple[str, ...]] = {
    kind: tuple(name for name, r in RELATIONS.items() if kind in r.subject_kinds)
    for kind in range(5)
}
_YEAR_RELATION = {PERSON: "birth_year", CITY: "founded_year", COUNTRY: "founded_year",
                  ORG: "founded_year", WORK: "release_year"}
_COMPARISON_QUESTIONS = {
    PERSON: "Who was born first, {A} or {B}?",
    CITY: "Which city was founded earlier, {A} or {B}?",
    COUNTRY: "Which country was founded earlier, {A} or {B}?",
    ORG: "Which organisation was founded earlier, {A} or {B}?",
    WORK: "Which was released first, {A} or {B}?",
}


def _placeholder_regex(template: str, subject: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for part in parts:
        if part == "{S}":
            out.append(r"(?<![\w'])" + re.escape(subject))
        elif part == "{O}":
            out.append(r"(?P<obj>[^\n]+?)")
        elif part == "{a}":
            out.append(r"an?")
        elif part == "{kind}":
            out.append(r"[a-z]+")
        elif part.endswith("."):
            out.append(re.escape(part[:-1]) + r"\.(?=\s|$)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def extract_fact(relation: str, subject: str, text: str) -> str | None:
    """Read the object of ``relation`` for ``subject`` from retrieved text.

    Args:
        relation: a key of :data:`RELATIONS`.
        subject: the subject's exact name (a near-namesake does not match).
        text: any text, e.g. a passage or a whole ``<information>`` block.

    Returns:
        The object as written in the first sentence matching the relation's template,
        or None when no such sentence is in ``text``.
    """
    found = find_fact(relation, subject, text)
    return found[0] if found else None


def find_fact(relation: str, subject: str, text: str) -> tuple[str, str] | None:
    """Like :func:`extract_fact`, but returns ``(object, sentence)``: the sentence is the
    evidence as written in ``text`` (``"Zelny Textiles is headquartered in Faven."``)."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {sorted(RELATIONS)}")
    match = _placeholder_regex(RELATIONS[relation].template, subject).search(text)
    return (match.group("obj").strip(), match.group(0).strip()) if match else None


# --------------------------------------------------------------------------- fillers

_FILLERS: dict[int, tuple[str, ...]] = {
    PERSON: (
        "{S} studied at the {W} Academy before moving abroad.",
        "Early records describe {S} as a patient and meticulous student.",
        "Letters written by {S} are kept in the archives of the {W} Library.",
        "{S} was fond of long walks along the banks of the {W} river.",
        "Contemporaries often mentioned {S} in accounts of the {W} reforms.",
        "A portrait of {S} hangs in the {W} Gallery.",
        "{S} received the {W} Medal in {Y}.",
        "Several biographies of {S} appeared after a major exhibition in {Y}.",
    ),
    CITY: (
        "{S} lies on the banks of the {W} river.",
        "The old town of {S} is known for its narrow {adj} bridges.",
        "{S} hosts an annual lantern festival in honour of {W}.",
        "The population of {S} was estimated at {N} in a recent census.",
        "Trade in {S} has long centred on {good}.",
        "A railway line opened in {Y} links {S} with the coast.",
    ),
    COUNTRY: (
        "The official language of {S} is {W}ese.",
        "{S} is bordered by mountains to the north and by the {W} Sea to the south.",
        "The currency of {S} is the {w}.",
        "Agriculture and the export of {good} remain important to the economy of {S}.",
        "{S} adopted its current constitution in {Y}.",
    ),
    ORG: (
        "{S} is active in the {industry} sector.",
        "{S} employs about {N} people.",
        "The emblem of {S}, a {adj} lantern, was adopted in {Y}.",
        "{S} operates branch offices in several regions.",
        "In {Y} {S} opened a training school named after {W}.",
    ),
    WORK: (
        "{S} received mixed reviews on its release.",
        "Critics praised the {adj} tone of {S}.",
        "{S} was later adapted for the stage in {Y}.",
        "The story of {S} follows a traveller named {W}.",
        "A restored edition of {S} appeared in {Y}.",
    ),
}
_FILLER_ADJS = ("stone", "wooden", "painted", "crooked", "ancient", "quiet", "slow", "bright")


# --------------------------------------------------------------------------- the world


class _Built(NamedTuple):
    key: tuple  # identifies the question, to drop duplicates
    text: str
    golds: tuple[str, ...]
    metadata: dict
    entities: list[int]  # every entity the question involves


class SynthWorld:
    """A generated world: entity records plus lazily rendered passages and questions.

    Entities are numbered ``0 .. num_entities - 1``, grouped by kind.

    Attributes:
        config: the config it was generated from.
        names: each entity's unique name.
        aliases: each entity's alias, ``""`` when it has none.
        kinds: each entity's kind as an index into ``KIND_NAMES``.
        heldout: 1 for entities whose questions are all in ``test``.
        passages: every corpus passage (rendered on first access, then cached).
        questions: ``{"train": [...], "test": [...]}`` (built on first access).
    """

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        rng = random.Random(f"search-env-synth-world-{config.seed}")
        self._used: set[str] = set()  # normalized names and aliases taken so far
        self._name_index: dict[str, int] | None = None
        self._plan_entities(rng)
        self._plan_relations(rng)
        self._plan_passages(rng)
        del self._used  # only needed while inventing names

    # ---- planning (O(n), compact arrays) ----

    def _plan_entities(self, rng: random.Random) -> None:
        n = self.config.num_entities
        counts = {k: max(2, round(n * share)) for k, share in _KIND_SHARE.items()}
        counts[CITY] = max(counts[CITY], counts[COUNTRY])
        counts[PERSON] = n - sum(counts.values())
        order = (COUNTRY, CITY, ORG, PERSON, WORK)
        self._range: dict[int, tuple[int, int]] = {}
        start = 0
        for kind in order:
            self._range[kind] = (start, start + counts[kind])
            start += counts[kind]
        self.kinds = bytearray(n)
        self.names: list[str] = []
        self.aliases: list[str] = []
        self._sub = bytearray(n)  # work kind or org type
        for kind in order:
            lo, hi = self._range[kind]
            self.kinds[lo:hi] = bytes([kind]) * (hi - lo)
            for idx in range(lo, hi):
                name = self._unique(lambda: _make_name(kind, rng))
                alias = self._alias(kind, idx, name, rng)
                self.names.append(name)
                self.aliases.append(alias)
        self.heldout = bytearray(rng.random() < self.config.heldout_entity_fraction
                                 for _ in range(n))

    def _unique(self, make: Callable[[], str]) -> str:
        for _ in range(200):
            name = make()
            key = normalize(name)
            if key and key not in self._used:
                self._used.add(key)
                return name
        raise RuntimeError("could not invent a unique name; the name space is exhausted")

    def _alias(self, kind: int, idx: int, name: str, rng: random.Random) -> str:
        if kind == PERSON:
            first, last = name.split(" ", 1)
            alias = f"{first[0]}. {last}"
        elif kind == CITY:
            alias = f"{name} City"
        elif kind == COUNTRY:
            style = int(rng.random() * len(_COUNTRY_ALIASES))
            alias = _COUNTRY_ALIASES[style].format(name)
        elif kind == ORG:
            self._sub[idx] = next(i for i, (t, _) in enumerate(_ORG_TYPES)
                                  if name.endswith(" " + t))
            alias = f"{name} {rng.choice(_ORG_ALIAS_SUFFIXES)}"
        else:
            self._sub[idx] = int(rng.random() * len(_WORK_KINDS))
            return ""
        key = normalize(alias)
        if key in self._used:
            return ""  # an alias must never name two entities
        self._used.add(key)
        return alias

    def _plan_relations(self, rng: random.Random) -> None:
        n = self.config.num_entities
        self._facts: dict[str, array] = {r: array("i", [-1]) * n for r in RELATIONS}
        f = self._facts
        rand = rng.random

        def pick(kind: int) -> int:
            lo, hi = self._range[kind]
            return lo + int(rand() * (hi - lo))

        c_lo, c_hi = self._range[COUNTRY]
        t_lo, t_hi = self._range[CITY]
        for i, city in enumerate(range(t_lo, t_hi)):
            # the first cities go round-robin so that every country has a capital
            f["country"][city] = c_lo + i if i < c_hi - c_lo else pick(COUNTRY)
            f["founded_year"][city] = 800 + int(rand() * 1100)
        for i, country in enumerate(range(c_lo, c_hi)):
            f["capital"][country] = t_lo + i
            f["founded_year"][country] = 1600 + int(rand() * 390)
        p_lo, p_hi = self._range[PERSON]
        for person in range(p_lo, p_hi):
            f["birth_year"][person] = 1800 + int(rand() * 196)
            f["birthplace"][person] = pick(CITY)
            f["occupation"][person] = int(rand() * len(OCCUPATIONS))
            f["employer"][person] = pick(ORG)
        people = list(range(p_lo, p_hi))
        rng.shuffle(people)
        married = people[: (len(people) // 2) & ~1]
        for a, b in zip(married[0::2], married[1::2]):
            f["spouse"][a], f["spouse"][b] = b, a
        for org in range(*self._range[ORG]):
            founder = pick(PERSON)
            f["founder"][org] = founder
            f["headquarters"][org] = pick(CITY)
            f["founded_year"][org] = min(2015, f["birth_year"][founder] + 20 + int(rand() * 40))
        for work in range(*self._range[WORK]):
            creator = pick(PERSON)
            f["creator"][work] = creator
            f["release_year"][work] = min(2023, f["birth_year"][creator] + 18 + int(rand() * 55))

    def _plan_passages(self, rng: random.Random) -> None:
        n = self.config.num_entities
        self._first_pid = array("i", [0]) * n
        pid = 0
        for idx in range(n):
            self._first_pid[idx] = pid
            pid += 2 if self.kinds[idx] == PERSON else 1
        self.num_entity_passages = pid
        # (kind of distractor, anchor entity, near-namesake name or "")
        self._distractors: list[tuple[int, int, str]] = []
        d = self.config.distractors_per_entity
        whole, frac = int(d), d - int(d)
        for idx in range(n):
            for _ in range(whole + (rng.random() < frac)):
                name = ""
                if rng.random() < 0.5:
                    try:
                        base = self.names[idx]
                        name = self._unique(lambda: _near_name(base, rng))
                    except RuntimeError:
                        name = ""
                self._distractors.append((0 if name else 1, idx, name))

    # ---- lookups ----

    def kind(self, idx: int) -> str:
        """The kind (``person``, ``city``, ...) of entity ``idx``."""
        return KIND_NAMES[self.kinds[idx]]

    def entity_index(self, name: str) -> int:
        """Index of the entity with exactly this name (KeyError if none)."""
        if self._name_index is None:
            self._name_index = {nm: i for i, nm in enumerate(self.names)}
        return self._name_index[name]

    def fact(self, idx: int, relation: str) -> str | None:
        """The object of ``relation`` for entity ``idx`` as text, None if it has none."""
        value = self._facts[relation][idx]
        if value < 0:
            return None
        return self._object_text(relation, value)

    def fact_passage_id(self, idx: int, relation: str) -> str:
        """Id of the passage of entity ``idx`` that states ``relation``."""
        return str(self._first_pid[idx] + RELATIONS[relation].passage)

    def answers(self, idx: int) -> tuple[str, ...]:
        """Gold answers naming entity ``idx``: its name then its alias."""
        alias = self.aliases[idx]
        return (self.names[idx], alias) if alias else (self.names[idx],)

    def _object_text(self, relation: str, value: int) -> str:
        rel = RELATIONS[relation]
        if rel.object_kind is not None:
            return self.names[value]
        if relation == "occupation":
            return OCCUPATIONS[value]
        return str(value)

    def _display(self, idx: int) -> str:
        if self.kinds[idx] == WORK:
            return f"the {_WORK_KINDS[self._sub[idx]]} {self.names[idx]}"
        return self.names[idx]

    def _format_keys(self, idx: int) -> dict[str, str]:
        sub = self._sub[idx] if self.kinds[idx] == WORK else 0
        return {"kind": _WORK_KINDS[sub], "verb": _WORK_VERBS[sub], "creator": _WORK_CREATORS[sub]}

    # ---- passages ----

    @cached_property
    def passages(self) -> list[Passage]:
        """Every passage, entity passages first (cached; use ``iter_passages`` to stream)."""
        return list(self.iter_passages())

    @property
    def num_passages(self) -> int:
        """Passages in the corpus, known without rendering them."""
        return self.num_entity_passages + len(self._distractors)

    def iter_passages(self) -> Iterator[Passage]:
        """Render the corpus passage by passage, deterministically, with ids ``"0"``, ..."""
        rng = random.Random(f"search-env-synth-passages-{self.config.seed}")
        pid = 0
        for idx in range(self.config.num_entities):
            for contents in self._entity_passages(idx, rng):
                yield Passage(str(pid), contents)
                pid += 1
        for dtype, anchor, name in self._distractors:
            if dtype == 0:
                contents = self._namesake_passage(anchor, name, rng)
            else:
                contents = self._mention_passage(anchor, rng)
            yield Passage(str(pid), contents)
            pid += 1

    def _sentence(self, relation: str, subject: str, obj: str, keys: dict[str, str]) -> str:
        rel = RELATIONS[relation]
        article = _article(keys["kind"] if relation == "creator" else obj)
        return rel.template.format(S=subject, O=obj, a=article, **keys)

    def _pad(self, kind: int, name: str, facts: list[str], rng: random.Random,
             extra: dict[str, str], base_year: int) -> str:
        """Join facts and filler sentences into 30-100 words.

        Years in fillers come after ``base_year`` (birth, founding or release).
        """
        fillers = list(_FILLERS[kind])
        rng.shuffle(fillers)
        sentences = list(facts)
        words = sum(s.count(" ") + 1 for s in sentences)
        want = 2 + int(rng.random() * 2)
        for filler in fillers:
            if words >= 30 and want <= 0:
                break
            text = filler.format(
                S=name, W=_word(rng, 2, 3), w=_word(rng, 1, 2).lower(),
                Y=str(min(2024, base_year + 5 + int(rng.random() * 60))),
                N=f"{1000 + int(rng.random() * 900000):,}",
                adj=rng.choice(_FILLER_ADJS), good=rng.choice(_GOODS), **extra,
            )
            # fillers go anywhere except before the first (defining) sentence
            sentences.insert(1 + int(rng.random() * len(sentences)), text)
            words += text.count(" ") + 1
            want -= 1
        return " ".join(sentences)

    def _entity_passages(self, idx: int, rng: random.Random) -> list[str]:
        kind, name = self.kinds[idx], self.names[idx]
        keys = self._format_keys(idx)
        groups: list[list[str]] = [[]] if kind != PERSON else [[], []]
        for relation in _KIND_RELATIONS[kind]:
            obj = self.fact(idx, relation)
            if obj is not None:
                groups[RELATIONS[relation].passage].append(
                    self._sentence(relation, name, obj, keys))
        if self.aliases[idx]:
            groups[0].insert(1, f"{name} is also known as {self.aliases[idx]}.")
        if kind == CITY:
            country = self._facts["country"][idx]
            if self._facts["capital"][country] == idx:
                groups[0].append(f"{name} serves as the seat of government of "
                                 f"{self.names[country]}.")
        extra = {"industry": _ORG_TYPES[self._sub[idx]][1] if kind == ORG else ""}
        base = self._facts[_YEAR_RELATION[kind]][idx]
        return [f'"{name}"\n' + self._pad(kind, name, g, rng, extra, base) for g in groups]

    def _random_entity(self, kind: int, rng: random.Random) -> int:
        lo, hi = self._range[kind]
        return lo + int(rng.random() * (hi - lo))

    def _namesake_passage(self, anchor: int, name: str, rng: random.Random) -> str:
        """A different entity of the anchor's kind with a near-identical name."""
        kind = self.kinds[anchor]
        keys = self._format_keys(anchor)
        facts = []
        for relation in _KIND_RELATIONS[kind]:
            rel = RELATIONS[relation]
            if rel.passage != 0 and rng.random() < 0.5:
                continue
            if rel.object_kind is not None:
                obj = self.names[self._random_entity(rel.object_kind, rng)]
            elif relation == "occupation":
                obj = rng.choice(OCCUPATIONS)
            else:
                obj = str(int(self._facts[relation][anchor]) + 1 + int(rng.random() * 40))
            facts.append(self._sentence(relation, name, obj, keys))
        extra = {"industry": _ORG_TYPES[self._sub[anchor]][1] if kind == ORG else ""}
        base = self._facts[_YEAR_RELATION[kind]][anchor]
        return f'"{name}"\n' + self._pad(kind, name, facts, rng, extra, base)

    def _mention_passage(self, anchor: int, rng: random.Random) -> str:
        """A passage about something else that names the anchor but states none of its facts."""
        kind, name = self.kinds[anchor], self.names[anchor]
        w = _word(rng, 2, 3)
        year = 1750 + int(rng.random() * 270)
        city = self.names[self._random_entity(CITY, rng)]
        person = self.names[self._random_entity(PERSON, rng)]
        org = self.names[self._random_entity(ORG, rng)]
        if kind == PERSON:
            title = f"{w} Congress"
            text = (f"The {w} Congress was a gathering held near {city} in {year}. Among its "
                    f"guests were {name} and {person}, both born in the region, who debated "
                    f"{rng.choice(_TOPICS)}. {name} later recalled the congress as a turning "
                    f"point. The proceedings were printed by {org}.")
        elif kind == CITY:
            title = f"{w} Road"
            text = (f"The {w} Road is an old trade route that connects {name} with {city}. "
                    f"Travellers founded many inns along it, and merchants from {name} carried "
                    f"{rng.choice(_GOODS)} over it for centuries. The road was paved in {year} "
                    f"with money raised by {org}.")
        elif kind == COUNTRY:
            other = self.names[self._random_entity(COUNTRY, rng)]
            title = f"Treaty of {w}"
            text = (f"The Treaty of {w} was signed in {year} by envoys of {name} and {other}. "
                    f"It settled a long dispute over {rng.choice(_TOPICS)} and fixed the border "
                    f"near {city}. The capital cities of both sides celebrated its signing, "
                    f"and {person} drafted most of its articles.")
        elif kind == ORG:
            title = f"{w} Prize"
            text = (f"The {w} Prize is an award founded in {year} and sponsored by {name}. It "
                    f"is given each year in {city} for work on {rng.choice(_TOPICS)}. Past "
                    f"winners include {person}, and the jury meets at the offices of {name}.")
        else:
            title = f"{w} Review"
            text = (f"The {w} Review is a literary magazine published in {city} since {year}. "
                    f"One of its best known issues was devoted to {name}, with essays by "
                    f"{person} on its themes and on its reception by readers.")
        return f'"{title}"\n{text}'

    # ---- questions ----

    @cached_property
    def questions(self) -> dict[str, list[QAExample]]:
        """``{"train": [...], "test": [...]}`` (cached; ``iter_questions`` streams)."""
        out: dict[str, list[QAExample]] = {"train": [], "test": []}
        for split, example in self.iter_questions():
            out[split].append(example)
        return out

    def iter_questions(self) -> Iterator[tuple[str, QAExample]]:
        """Generate ``(split, question)`` pairs deterministically, anchors in random order."""
        cfg = self.config
        rng = random.Random(f"search-env-synth-questions-{cfg.seed}")
        anchors = list(range(cfg.num_entities))
        rng.shuffle(anchors)
        total = sum(cfg.question_mix)
        cumulative = [sum(cfg.question_mix[: i + 1]) / total for i in range(4)]
        whole, frac = int(cfg.questions_per_entity), cfg.questions_per_entity % 1
        seen: set[tuple] = set()
        number = 0
        for anchor in anchors:
            for _ in range(whole + (rng.random() < frac)):
                for _attempt in range(3):
                    u = rng.random()
                    qtype = next(i for i, c in enumerate(cumulative) if u < c or i == 3)
                    built = self._make_question(anchor, qtype, rng)
                    if built.key not in seen:
                        break
                else:
                    continue  # only duplicates for this anchor
                key, text, golds, meta, entities = built
                seen.add(key)
                heldout = any(self.heldout[e] for e in entities)
                to_test = rng.random() < cfg.test_fraction
                meta["heldout"] = heldout
                split = "test" if heldout or to_test else "train"
                yield split, QAExample(f"synth-{number}", text, golds, meta)
                number += 1

    def _hop(self, idx: int, relation: str) -> dict[str, str]:
        name = self.names[idx]
        return {
            "subject": name,
            "relation": relation,
            "object": self.fact(idx, relation) or "",
            "passage_id": self.fact_passage_id(idx, relation),
            "query": RELATIONS[relation].query.format(S=name, **self._format_keys(idx)),
        }

    def _relations_of(self, idx: int) -> list[str]:
        return [r for r in _KIND_RELATIONS[self.kinds[idx]] if self._facts[r][idx] >= 0]

    def _make_question(self, anchor: int, qtype: int, rng: random.Random) -> _Built:
        if qtype == 3:
            built = self._comparison(anchor, rng)
            if built is not None:
                return built
            qtype = 1
        if qtype in (1, 2):
            for _ in range(4):
                built = self._chain(anchor, qtype + 1, rng)
                if built is not None:
                    return built
        built = self._chain(anchor, 1, rng)
        assert built is not None  # every entity has at least one fact
        return built

    def _chain(self, anchor: int, hops: int, rng: random.Random) -> _Built | None:
        path, relations, idx = [anchor], [], anchor
        for step in range(hops):
            options = self._relations_of(idx)
            if step < hops - 1:  # a bridge must lead to another entity
                options = [r for r in options if RELATIONS[r].object_kind is not None]
            options = [r for r in options if RELATIONS[r].object_kind is None
                       or self._facts[r][idx] not in path]
            if not options:
                return None
            relation = rng.choice(options)
            relations.append(relation)
            value = self._facts[relation][idx]
            if RELATIONS[relation].object_kind is not None:
                idx = value
                path.append(idx)
        phrase = self._display(anchor)
        for relation, subject in zip(relations[:-1], path):
            phrase = RELATIONS[relation].phrase.format(P=phrase, **self._format_keys(subject))
        last_subject = path[len(relations) - 1]
        text = RELATIONS[relations[-1]].question.format(P=phrase,
                                                        **self._format_keys(last_subject))
        if RELATIONS[relations[-1]].object_kind is not None:
            golds = self.answers(path[-1])
        else:
            golds = (self.fact(last_subject, relations[-1]),)
        meta = {
            "type": "single" if hops == 1 else "bridge",
            "hops": [self._hop(s, r) for s, r in zip(path, relations)],
        }
        return _Built((anchor, tuple(relations)), text, golds, meta, path)

    def _comparison(self, anchor: int, rng: random.Random) -> _Built | None:
        kind = self.kinds[anchor]
        relation = _YEAR_RELATION[kind]
        years = self._facts[relation]
        for _ in range(5):
            other = self._random_entity(kind, rng)
            if other != anchor and years[other] != years[anchor]:
                break
        else:
            return None
        a, b = (anchor, other) if rng.random() < 0.5 else (other, anchor)
        text = _COMPARISON_QUESTIONS[kind].format(A=self.names[a], B=self.names[b])
        first = a if years[a] < years[b] else b
        meta = {"type": "comparison", "hops": [self._hop(a, relation), self._hop(b, relation)]}
        return _Built(("cmp", min(a, b), max(a, b)), text, self.answers(first), meta, [a, b])


def generate_world(config: SynthConfig = SynthConfig()) -> SynthWorld:
    """Plan a world from ``config``; passages and questions render on first use."""
    return SynthWorld(config)


# --------------------------------------------------------------------------- files


def _open_write(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        # mtime=0 and no file name in the header keep the bytes reproducible
        raw = open(path, "wb")
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        return _ClosingTextWrapper(gz, raw)
    return open(path, "w", encoding="utf-8", newline="\n")


class _ClosingTextWrapper(io.TextIOWrapper):
    def __init__(self, gz: gzip.GzipFile, raw: io.BufferedWriter) -> None:
        super().__init__(gz, encoding="utf-8", newline="\n")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def write_corpus(world: SynthWorld, path: str | Path) -> Path:
    """Write the corpus as JSONL ``{"id", "contents"}`` lines (gzip if ``.gz``)."""
    path = Path(path)
    with _open_write(path) as f:
        for p in world.iter_passages():
            f.write(json.dumps({"id": p.id, "contents": p.contents}, ensure_ascii=False) + "\n")
    return path


def _qa_row(example: QAExample) -> str:
    row = {"id": example.id, "question": example.question,
           "golden_answers": list(example.golden_answers), "metadata": example.metadata}
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_qa(world: SynthWorld, directory: str | Path) -> dict[str, Path]:
    """Write FlashRAG JSONL files ``train.jsonl`` and ``test.jsonl``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {split: directory / f"{split}.jsonl" for split in ("train", "test")}
    files = {split: open(p, "w", encoding="utf-8", newline="\n") for split, p in paths.items()}
    try:
        if "questions" in world.__dict__:  # already built: reuse
            pairs: Iterator[tuple[str, QAExample]] = (
                (s, q) for s, qs in world.questions.items() for q in qs)
        else:
            pairs = world.iter_questions()
        for split, example in pairs:
            files[split].write(_qa_row(example))
    finally:
        for f in files.values():
            f.close()
    return paths


def config_hash(config: SynthConfig) -> str:
    """A stable hash of the config and the generator's format version."""
    payload = json.dumps({"format": FORMAT_VERSION, **asdict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$SEARCH_ENV_CACHE`` or ``~/.cache/search_env``."""
    env = os.environ.get("SEARCH_ENV_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "search_env"


def build_cached(config: SynthConfig, cache_dir: Path | None = None) -> Path:
    """Write corpus and QA for ``config`` once, and return the directory holding them.

    The directory ``<cache_dir>/synth-<config hash>`` holds ``corpus.jsonl``,
    ``train.jsonl``, ``test.jsonl`` and ``config.json``. It is written to a temporary
    directory and renamed into place, so a reader never sees a half-written world; a later
    call with the same config returns it without regenerating.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"synth-{config_hash(config)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        world = generate_world(config)
        write_corpus(world, tmp / "corpus.jsonl")
        write_qa(world, tmp)
        meta = {"format": FORMAT_VERSION, "config": asdict(config),
                "num_passages": world.num_passages}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # another process finished the same world first; keep theirs
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
