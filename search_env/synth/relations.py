"""The relations of a synthetic world: one fixed sentence template per relation, which is
what lets :func:`find_fact` (and so the scripted oracle) read a fact back from text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from search_env.synth.names import CITY, COUNTRY, ORG, PERSON, WORK


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
        Relation(
            "birth_year",
            (PERSON,),
            None,
            "{S} was born in the year {O}.",
            "{S} born in year",
            "In what year was {P} born?",
            None,
        ),
        Relation(
            "birthplace",
            (PERSON,),
            CITY,
            "{S} was born in the city of {O}.",
            "{S} born in city",
            "In which city was {P} born?",
            "the birthplace of {P}",
        ),
        Relation(
            "occupation",
            (PERSON,),
            None,
            "{S} worked as {a} {O}.",
            "{S} occupation worked as",
            "What was the occupation of {P}?",
            None,
            1,
        ),
        Relation(
            "employer",
            (PERSON,),
            ORG,
            "{S} was employed by {O}.",
            "{S} employed by",
            "Which organisation employed {P}?",
            "the employer of {P}",
            1,
        ),
        Relation(
            "spouse",
            (PERSON,),
            PERSON,
            "{S} was married to {O}.",
            "{S} married to",
            "Who was {P} married to?",
            "the spouse of {P}",
            1,
        ),
        Relation(
            "country",
            (CITY,),
            COUNTRY,
            "{S} is a city in {O}.",
            "{S} city in country",
            "In which country is {P} located?",
            "the country of {P}",
        ),
        Relation(
            "capital",
            (COUNTRY,),
            CITY,
            "The capital of {S} is {O}.",
            "capital of {S}",
            "What is the capital of {P}?",
            "the capital of {P}",
        ),
        Relation(
            "founder",
            (ORG,),
            PERSON,
            "{S} was founded by {O}.",
            "{S} founded by",
            "Who founded {P}?",
            "the founder of {P}",
        ),
        Relation(
            "headquarters",
            (ORG,),
            CITY,
            "{S} is headquartered in {O}.",
            "{S} headquartered in",
            "In which city is {P} headquartered?",
            "the headquarters of {P}",
        ),
        Relation(
            "founded_year",
            (CITY, COUNTRY, ORG),
            None,
            "{S} was founded in {O}.",
            "{S} founded in year",
            "In what year was {P} founded?",
            None,
        ),
        Relation(
            "creator",
            (WORK,),
            PERSON,
            "{S} is {a} {kind} by {O}.",
            "{S} {kind} by",
            "Who {verb} {P}?",
            "the {creator} of {P}",
        ),
        Relation(
            "release_year",
            (WORK,),
            None,
            "{S} was released in {O}.",
            "{S} released in year",
            "In what year was {P} released?",
            None,
        ),
    )
}
FACT_TEMPLATES: dict[str, str] = {name: r.template for name, r in RELATIONS.items()}
"""The sentence stating each relation; :func:`extract_fact` reads these back."""

KIND_RELATIONS: dict[int, tuple[str, ...]] = {
    kind: tuple(name for name, r in RELATIONS.items() if kind in r.subject_kinds)
    for kind in range(5)
}
"""The relations whose subject is of each kind, in a fixed order."""
YEAR_RELATION = {
    PERSON: "birth_year",
    CITY: "founded_year",
    COUNTRY: "founded_year",
    ORG: "founded_year",
    WORK: "release_year",
}
"""The year relation of each kind: what comparison questions compare."""


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
