"""The questions of a synthetic world: 1- to 3-hop chains and comparisons, with gold paths.

A question's ``metadata["type"]`` is one of :data:`~search_env.synth.config.QUESTION_TYPES`
and ``metadata["hops"]`` holds its gold reasoning path, one dict per hop: ``subject``,
``relation``, ``object``, the ``passage_id`` of the passage that states it and a good
``query``. :func:`of_types` keeps the questions of some types.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from search_env.synth.config import QUESTION_MIX, QUESTION_TYPES, QuestionShape
from search_env.synth.names import CITY, COUNTRY, ORG, PERSON, WORK
from search_env.synth.relations import KIND_RELATIONS, RELATIONS, YEAR_RELATION
from search_env.types import QAExample

if TYPE_CHECKING:
    from search_env.synth.world import SynthWorld

_COMPARISON_QUESTIONS = {
    PERSON: "Who was born first, {A} or {B}?",
    CITY: "Which city was founded earlier, {A} or {B}?",
    COUNTRY: "Which country was founded earlier, {A} or {B}?",
    ORG: "Which organisation was founded earlier, {A} or {B}?",
    WORK: "Which was released first, {A} or {B}?",
}
_FALLBACK = QuestionShape("bridge", 2)
"""What a comparison becomes when no entity to compare with is found."""


class _Built(NamedTuple):
    key: tuple  # identifies the question, to drop duplicates
    text: str
    golds: tuple[str, ...]
    metadata: dict
    entities: list[int]  # every entity the question involves


def iter_questions(world: SynthWorld) -> Iterator[tuple[str, QAExample]]:
    """Generate ``(split, question)`` pairs deterministically, anchors in random order."""
    cfg = world.config
    rng = random.Random(f"search-env-synth-questions-{cfg.seed}")
    anchors = list(range(cfg.num_entities))
    rng.shuffle(anchors)
    total = sum(cfg.question_mix)
    last = len(QUESTION_MIX) - 1
    cumulative = [sum(cfg.question_mix[: i + 1]) / total for i in range(len(QUESTION_MIX))]
    whole, frac = int(cfg.questions_per_entity), cfg.questions_per_entity % 1
    seen: set[tuple] = set()
    number = 0
    for anchor in anchors:
        for _ in range(whole + (rng.random() < frac)):
            for _attempt in range(3):
                u = rng.random()
                shape = next(
                    QUESTION_MIX[i] for i, c in enumerate(cumulative) if u < c or i == last
                )
                built = _make_question(world, anchor, shape, rng)
                if built.key not in seen:
                    break
            else:
                continue  # only duplicates for this anchor
            key, text, golds, meta, entities = built
            seen.add(key)
            heldout = any(world.heldout[e] for e in entities)
            to_test = rng.random() < cfg.test_fraction
            meta["heldout"] = heldout
            split = "test" if heldout or to_test else "train"
            yield split, QAExample(f"synth-{number}", text, golds, meta)
            number += 1


def of_types(examples: Sequence[QAExample], types: Sequence[str]) -> list[QAExample]:
    """The synthetic questions whose ``metadata["type"]`` is one of ``types``.

    Raises:
        ValueError: ``types`` is empty or names a type not in ``QUESTION_TYPES``, or no
            question of ``examples`` has one of them.
    """
    if isinstance(types, str):
        types = [types]
    bad = sorted(set(types) - set(QUESTION_TYPES))
    if bad or not types:
        raise ValueError(
            f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {list(types)!r}"
        )
    kept = [ex for ex in examples if ex.metadata.get("type") in types]
    if not kept:
        raise ValueError(f"no synthetic question of type {list(types)} in this split")
    return kept


def _hop(world: SynthWorld, idx: int, relation: str) -> dict[str, str]:
    name = world.names[idx]
    return {
        "subject": name,
        "relation": relation,
        "object": world.fact(idx, relation) or "",
        "passage_id": world.fact_passage_id(idx, relation),
        "query": RELATIONS[relation].query.format(S=name, **world.format_keys(idx)),
    }


def _relations_of(world: SynthWorld, idx: int) -> list[str]:
    return [r for r in KIND_RELATIONS[world.kinds[idx]] if world.fact_value(idx, r) >= 0]


def _make_question(
    world: SynthWorld, anchor: int, shape: QuestionShape, rng: random.Random
) -> _Built:
    if shape.type == "comparison":
        built = _comparison(world, anchor, rng)
        if built is not None:
            return built
        shape = _FALLBACK
    if shape.type == "bridge":
        for _ in range(4):
            built = _chain(world, anchor, shape.hops, rng)
            if built is not None:
                return built
    built = _chain(world, anchor, 1, rng)
    assert built is not None  # every entity has at least one fact
    return built


def _chain(world: SynthWorld, anchor: int, hops: int, rng: random.Random) -> _Built | None:
    path, relations, idx = [anchor], [], anchor
    for step in range(hops):
        options = _relations_of(world, idx)
        if step < hops - 1:  # a bridge must lead to another entity
            options = [r for r in options if RELATIONS[r].object_kind is not None]
        options = [
            r
            for r in options
            if RELATIONS[r].object_kind is None or world.fact_value(idx, r) not in path
        ]
        if not options:
            return None
        relation = rng.choice(options)
        relations.append(relation)
        value = world.fact_value(idx, relation)
        if RELATIONS[relation].object_kind is not None:
            idx = value
            path.append(idx)
    phrase = world.display_name(anchor)
    for relation, subject in zip(relations[:-1], path):
        template = RELATIONS[relation].phrase
        assert template is not None  # inner hops lead to entities, and those have a phrase
        phrase = template.format(P=phrase, **world.format_keys(subject))
    last_subject = path[len(relations) - 1]
    text = RELATIONS[relations[-1]].question.format(P=phrase, **world.format_keys(last_subject))
    if RELATIONS[relations[-1]].object_kind is not None:
        golds = world.answers(path[-1])
    else:
        literal = world.fact(last_subject, relations[-1])
        assert literal is not None  # _relations_of keeps only the facts an entity has
        golds = (literal,)
    meta = {
        "type": "single" if hops == 1 else "bridge",
        "hops": [_hop(world, s, r) for s, r in zip(path, relations)],
    }
    return _Built((anchor, tuple(relations)), text, golds, meta, path)


def _comparison(world: SynthWorld, anchor: int, rng: random.Random) -> _Built | None:
    kind = world.kinds[anchor]
    relation = YEAR_RELATION[kind]

    def year(idx: int) -> int:
        return world.fact_value(idx, relation)

    for _ in range(5):
        other = world.random_entity(kind, rng)
        if other != anchor and year(other) != year(anchor):
            break
    else:
        return None
    a, b = (anchor, other) if rng.random() < 0.5 else (other, anchor)
    text = _COMPARISON_QUESTIONS[kind].format(A=world.names[a], B=world.names[b])
    first = a if year(a) < year(b) else b
    meta = {"type": "comparison", "hops": [_hop(world, a, relation), _hop(world, b, relation)]}
    return _Built(("cmp", min(a, b), max(a, b)), text, world.answers(first), meta, [a, b])
