"""A generated world: entity records planned as compact arrays, passages rendered lazily.

Generation is O(number of entities): entity records are planned in memory as compact
arrays, and passages and questions are rendered on demand
(:meth:`SynthWorld.iter_passages`, :meth:`SynthWorld.iter_questions`), so the writers of
:mod:`search_env.synth.files` stream. The same config always gives the same world.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Iterator
from functools import cached_property

from search_env.rewards import normalize
from search_env.synth.config import SynthConfig
from search_env.synth.names import (
    CITY,
    COUNTRY,
    COUNTRY_ALIASES,
    KIND_NAMES,
    KIND_SHARE,
    OCCUPATIONS,
    ORG,
    ORG_ALIAS_SUFFIXES,
    ORG_TYPES,
    PERSON,
    WORK,
    WORK_CREATORS,
    WORK_KINDS,
    WORK_VERBS,
    invented_word,
    make_name,
    near_name,
)
from search_env.synth.questions import iter_questions
from search_env.synth.relations import KIND_RELATIONS, RELATIONS, YEAR_RELATION
from search_env.types import Passage, QAExample

# The filler sentences that pad each passage to 30-100 words, and what they mention.
_GOODS = ("salt", "timber", "wool", "copper", "amber", "tea", "glassware", "silk", "grain")
_TOPICS = ("river trade", "coinage", "map making", "poetry", "shipbuilding", "astronomy")

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


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


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
        counts = {k: max(2, round(n * share)) for k, share in KIND_SHARE.items()}
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
                name = self._unique(lambda: make_name(kind, rng))
                alias = self._alias(kind, idx, name, rng)
                self.names.append(name)
                self.aliases.append(alias)
        self.heldout = bytearray(
            rng.random() < self.config.heldout_entity_fraction for _ in range(n)
        )

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
            style = int(rng.random() * len(COUNTRY_ALIASES))
            alias = COUNTRY_ALIASES[style].format(name)
        elif kind == ORG:
            self._sub[idx] = next(i for i, (t, _) in enumerate(ORG_TYPES) if name.endswith(" " + t))
            alias = f"{name} {rng.choice(ORG_ALIAS_SUFFIXES)}"
        else:
            self._sub[idx] = int(rng.random() * len(WORK_KINDS))
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
                        name = self._unique(lambda: near_name(base, rng))
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

    def fact_value(self, idx: int, relation: str) -> int:
        """The stored object of ``relation`` for ``idx``: an entity index, a year or an
        occupation index; -1 when it has none."""
        return self._facts[relation][idx]

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

    def display_name(self, idx: int) -> str:
        """How a question names ``idx``: a work with its kind (``the novel ...``)."""
        if self.kinds[idx] == WORK:
            return f"the {WORK_KINDS[self._sub[idx]]} {self.names[idx]}"
        return self.names[idx]

    def format_keys(self, idx: int) -> dict[str, str]:
        """The ``{kind}``, ``{verb}``, ``{creator}`` words of templates about ``idx``."""
        sub = self._sub[idx] if self.kinds[idx] == WORK else 0
        return {"kind": WORK_KINDS[sub], "verb": WORK_VERBS[sub], "creator": WORK_CREATORS[sub]}

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

    def _pad(
        self,
        kind: int,
        name: str,
        facts: list[str],
        rng: random.Random,
        extra: dict[str, str],
        base_year: int,
    ) -> str:
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
                S=name,
                W=invented_word(rng, 2, 3),
                w=invented_word(rng, 1, 2).lower(),
                Y=str(min(2024, base_year + 5 + int(rng.random() * 60))),
                N=f"{1000 + int(rng.random() * 900000):,}",
                adj=rng.choice(_FILLER_ADJS),
                good=rng.choice(_GOODS),
                **extra,
            )
            # fillers go anywhere except before the first (defining) sentence
            sentences.insert(1 + int(rng.random() * len(sentences)), text)
            words += text.count(" ") + 1
            want -= 1
        return " ".join(sentences)

    def _entity_passages(self, idx: int, rng: random.Random) -> list[str]:
        kind, name = self.kinds[idx], self.names[idx]
        keys = self.format_keys(idx)
        groups: list[list[str]] = [[]] if kind != PERSON else [[], []]
        for relation in KIND_RELATIONS[kind]:
            obj = self.fact(idx, relation)
            if obj is not None:
                groups[RELATIONS[relation].passage].append(
                    self._sentence(relation, name, obj, keys)
                )
        if self.aliases[idx]:
            groups[0].insert(1, f"{name} is also known as {self.aliases[idx]}.")
        if kind == CITY:
            country = self._facts["country"][idx]
            if self._facts["capital"][country] == idx:
                groups[0].append(
                    f"{name} serves as the seat of government of {self.names[country]}."
                )
        extra = {"industry": ORG_TYPES[self._sub[idx]][1] if kind == ORG else ""}
        base = self._facts[YEAR_RELATION[kind]][idx]
        return [f'"{name}"\n' + self._pad(kind, name, g, rng, extra, base) for g in groups]

    def random_entity(self, kind: int, rng: random.Random) -> int:
        """A uniformly drawn entity of ``kind`` (one ``rng.random()`` call)."""
        lo, hi = self._range[kind]
        return lo + int(rng.random() * (hi - lo))

    def _namesake_passage(self, anchor: int, name: str, rng: random.Random) -> str:
        """A different entity of the anchor's kind with a near-identical name."""
        kind = self.kinds[anchor]
        keys = self.format_keys(anchor)
        facts = []
        for relation in KIND_RELATIONS[kind]:
            rel = RELATIONS[relation]
            if rel.passage != 0 and rng.random() < 0.5:
                continue
            if rel.object_kind is not None:
                obj = self.names[self.random_entity(rel.object_kind, rng)]
            elif relation == "occupation":
                obj = rng.choice(OCCUPATIONS)
            else:
                obj = str(int(self._facts[relation][anchor]) + 1 + int(rng.random() * 40))
            facts.append(self._sentence(relation, name, obj, keys))
        extra = {"industry": ORG_TYPES[self._sub[anchor]][1] if kind == ORG else ""}
        base = self._facts[YEAR_RELATION[kind]][anchor]
        return f'"{name}"\n' + self._pad(kind, name, facts, rng, extra, base)

    def _mention_passage(self, anchor: int, rng: random.Random) -> str:
        """A passage about something else that names the anchor but states none of its facts."""
        kind, name = self.kinds[anchor], self.names[anchor]
        w = invented_word(rng, 2, 3)
        year = 1750 + int(rng.random() * 270)
        city = self.names[self.random_entity(CITY, rng)]
        person = self.names[self.random_entity(PERSON, rng)]
        org = self.names[self.random_entity(ORG, rng)]
        if kind == PERSON:
            title = f"{w} Congress"
            text = (
                f"The {w} Congress was a gathering held near {city} in {year}. Among its "
                f"guests were {name} and {person}, both born in the region, who debated "
                f"{rng.choice(_TOPICS)}. {name} later recalled the congress as a turning "
                f"point. The proceedings were printed by {org}."
            )
        elif kind == CITY:
            title = f"{w} Road"
            text = (
                f"The {w} Road is an old trade route that connects {name} with {city}. "
                f"Travellers founded many inns along it, and merchants from {name} carried "
                f"{rng.choice(_GOODS)} over it for centuries. The road was paved in {year} "
                f"with money raised by {org}."
            )
        elif kind == COUNTRY:
            other = self.names[self.random_entity(COUNTRY, rng)]
            title = f"Treaty of {w}"
            text = (
                f"The Treaty of {w} was signed in {year} by envoys of {name} and {other}. "
                f"It settled a long dispute over {rng.choice(_TOPICS)} and fixed the border "
                f"near {city}. The capital cities of both sides celebrated its signing, "
                f"and {person} drafted most of its articles."
            )
        elif kind == ORG:
            title = f"{w} Prize"
            text = (
                f"The {w} Prize is an award founded in {year} and sponsored by {name}. It "
                f"is given each year in {city} for work on {rng.choice(_TOPICS)}. Past "
                f"winners include {person}, and the jury meets at the offices of {name}."
            )
        else:
            title = f"{w} Review"
            text = (
                f"The {w} Review is a literary magazine published in {city} since {year}. "
                f"One of its best known issues was devoted to {name}, with essays by "
                f"{person} on its themes and on its reception by readers."
            )
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
        """Generate ``(split, question)`` pairs deterministically (see
        :func:`search_env.synth.questions.iter_questions`)."""
        return iter_questions(self)


def generate_world(config: SynthConfig = SynthConfig()) -> SynthWorld:
    """Plan a world from ``config``; passages and questions render on first use."""
    return SynthWorld(config)
