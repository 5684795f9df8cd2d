"""Entity kinds and the invented vocabulary of a synthetic world: every name is made of
syllables, so no pretrained model knows any of them."""

from __future__ import annotations

import random

PERSON, CITY, COUNTRY, ORG, WORK = range(5)
"""Entity kinds, as stored in :attr:`SynthWorld.kinds <search_env.synth.world.SynthWorld>`."""
KIND_NAMES = ("person", "city", "country", "organisation", "work")
KIND_SHARE = {COUNTRY: 0.02, CITY: 0.13, ORG: 0.12, WORK: 0.20}  # people take the rest

_SYLLABLES = (
    "vel",
    "or",
    "in",
    "quas",
    "tad",
    "trel",
    "zar",
    "eth",
    "mir",
    "bal",
    "dor",
    "ka",
    "len",
    "ris",
    "tho",
    "ven",
    "sa",
    "lu",
    "mar",
    "bre",
    "nos",
    "ulm",
    "fa",
    "gar",
    "ith",
    "ost",
    "pel",
    "ran",
    "sil",
    "tor",
    "vi",
    "wen",
    "yar",
    "zel",
    "cor",
    "dra",
    "fen",
    "har",
    "ix",
    "jor",
    "kel",
    "lor",
    "nim",
    "oth",
    "pra",
    "sev",
    "tun",
    "val",
    "rhe",
    "ast",
    "bel",
    "cai",
    "dun",
    "ery",
    "gly",
    "hol",
    "isk",
    "kov",
    "mev",
    "ny",
    "pim",
    "qua",
    "rov",
    "syl",
    "tev",
    "ur",
    "vo",
    "wyr",
    "xe",
    "zu",
)
_CITY_SUFFIXES = ("mont", "holm", "dale", "grad", "burg", "ford", "haven", "port", "wick")
_COUNTRY_SUFFIXES = ("ia", "land", "ora", "istan", "ovia", "aria", "enn")
COUNTRY_ALIASES = ("Republic of {}", "Kingdom of {}", "Federation of {}", "Commonwealth of {}")
ORG_TYPES = (
    ("Dynamics", "engineering"),
    ("Holdings", "finance"),
    ("Shipworks", "shipbuilding"),
    ("Press", "publishing"),
    ("Analytics", "data analysis"),
    ("Foundry", "metalworking"),
    ("Institute", "research"),
    ("Records", "music"),
    ("Studios", "film"),
    ("Textiles", "textiles"),
    ("Mining", "mining"),
    ("Airways", "aviation"),
    ("Bank", "banking"),
    ("Pharmaceuticals", "medicine"),
    ("Motors", "automobiles"),
)
ORG_ALIAS_SUFFIXES = ("Group", "Company", "Ltd.", "Inc.")
WORK_KINDS = ("novel", "film", "album")
WORK_VERBS = ("wrote", "directed", "recorded")
WORK_CREATORS = ("author", "director", "performer")
_ADJECTIVES = (
    "Amber",
    "Silent",
    "Hollow",
    "Crimson",
    "Last",
    "Distant",
    "Bitter",
    "Golden",
    "Pale",
    "Broken",
    "Winter",
    "Hidden",
    "Burning",
    "Quiet",
    "Iron",
    "Glass",
    "Seventh",
    "Lonely",
)
_NOUNS = (
    "Gate",
    "River",
    "Lantern",
    "Harbour",
    "Orchard",
    "Mirror",
    "Tower",
    "Letter",
    "Garden",
    "Crown",
    "Bridge",
    "Voyage",
    "Song",
    "Shadow",
    "Archive",
    "Compass",
    "Feast",
    "Wall",
)
OCCUPATIONS = (
    "painter",
    "engineer",
    "novelist",
    "architect",
    "physician",
    "composer",
    "botanist",
    "merchant",
    "sculptor",
    "astronomer",
    "diplomat",
    "film director",
    "cartographer",
    "economist",
    "poet",
    "chemist",
    "journalist",
    "violinist",
    "lawyer",
    "historian",
)


def invented_word(rng: random.Random, lo: int, hi: int) -> str:
    """A capitalised word of ``lo`` to ``hi`` random syllables."""
    n = lo + int(rng.random() * (hi - lo + 1))
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()


def invented_name(rng: random.Random) -> str:
    """A random invented person-like name such as ``"Velorin Quastad"``."""
    return f"{invented_word(rng, 2, 3)} {invented_word(rng, 2, 3)}"


def make_name(kind: int, rng: random.Random) -> str:
    """A random name for an entity of ``kind`` (not checked for uniqueness)."""
    if kind == PERSON:
        return invented_name(rng)
    if kind == CITY:
        word = invented_word(rng, 2, 3)
        return word + rng.choice(_CITY_SUFFIXES) if rng.random() < 0.5 else word
    if kind == COUNTRY:
        return invented_word(rng, 1, 2) + rng.choice(_COUNTRY_SUFFIXES)
    if kind == ORG:
        return f"{invented_word(rng, 2, 3)} {rng.choice(ORG_TYPES)[0]}"
    w, adj, noun = invented_word(rng, 2, 3), rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
    pattern = int(rng.random() * 5)
    return (
        f"The {adj} {noun} of {w}",
        f"{w}'s {noun}",
        f"The {w} {noun}",
        f"{noun}s of {w}",
        f"A {noun} for {w}",
    )[pattern]


_VOWELS = "aeiouy"


def near_name(name: str, rng: random.Random) -> str:
    """``name`` with one vowel changed or one letter doubled: a near-namesake."""
    positions = [i for i, c in enumerate(name) if i > 0 and c in _VOWELS and name[i - 1] != " "]
    if not positions or rng.random() < 0.25:
        i = 1 + int(rng.random() * (len(name) - 1))
        if not name[i].isalpha():
            return name + "e"
        return name[:i] + name[i] + name[i:]
    i = rng.choice(positions)
    return name[:i] + rng.choice([v for v in _VOWELS if v != name[i]]) + name[i + 1 :]
