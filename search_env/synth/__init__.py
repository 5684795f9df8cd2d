"""SearchQA-Synth: a seeded fictional world, written as a wiki-18 corpus plus QA.

Every name is invented from syllables, so no pretrained model can know a single fact of
this world: an agent can only answer by searching. The world has people, cities,
countries, organisations and works (novels, films, albums) tied by relations (a person's
birthplace and employer, an organisation's founder and headquarters, ...). Each fact is
written with one fixed sentence template per relation, which is what lets
:func:`~search_env.synth.relations.find_fact` (and so the scripted oracle) read it back.

Questions take 1 to 3 hops (``single``, ``bridge``) or compare two entities
(``comparison``); ``QAExample.metadata["hops"]`` holds the gold reasoning path with the
passage that states each hop. Near-namesake passages and passages that merely mention an
entity act as distractors.

Modules:

- :mod:`~search_env.synth.config`: :class:`SynthConfig`, the named sizes, question shapes.
- :mod:`~search_env.synth.names`: entity kinds and the invented vocabulary.
- :mod:`~search_env.synth.relations`: relation templates, :func:`find_fact`.
- :mod:`~search_env.synth.world`: :class:`SynthWorld` (entities, passages).
- :mod:`~search_env.synth.questions`: the questions and their gold paths.
- :mod:`~search_env.synth.files`: corpus / QA writers and the build-once cache.
- :mod:`~search_env.synth.oracle`: :class:`~search_env.synth.oracle.OracleAgent`.
- :mod:`~search_env.synth.tokenizer`: the shipped BPE and a world's own.
"""

from search_env.synth.config import QUESTION_TYPES, SynthConfig
from search_env.synth.files import build_cached, synth_world_dir, write_corpus, write_qa
from search_env.synth.relations import RELATIONS, extract_fact, find_fact
from search_env.synth.world import SynthWorld, generate_world

__all__ = [
    "QUESTION_TYPES",
    "RELATIONS",
    "SynthConfig",
    "SynthWorld",
    "build_cached",
    "extract_fact",
    "find_fact",
    "generate_world",
    "synth_world_dir",
    "write_corpus",
    "write_qa",
]
