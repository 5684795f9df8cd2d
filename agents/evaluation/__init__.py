"""Greedy evaluation of a model on SearchQA envs, with baselines, in the paper's table layout.

Methods (rows of the table):

- ``search``: the model plays the Search-R1 protocol (it may search ``max_turns`` times).
- ``direct``: the model answers from its own knowledge: :data:`DIRECT_TEMPLATE`, one turn,
  no search is executed (``max_turns=0``).
- ``rag``: the env's retriever is queried once with the question; the top-k documents go
  into the prompt (:data:`RAG_TEMPLATE`); one turn, no search.
- ``oracle``: the scripted :class:`~search_env.synth.oracle.OracleAgent` (needs the gold hops of
  ``SearchQA-Synth-v0`` questions; skipped on other envs).

Every method runs through a chunk-mode vector env, so answers are read from the agent's
own tokens and scored exactly as in training (EM, F1, cover-EM). Columns: NQ, TriviaQA,
PopQA, HotpotQA, 2wiki, Musique, Bamboogle (the paper's), then any other env (``Synth``),
then Avg. :class:`EvalReport` writes JSON (summaries and every episode) and markdown.

Modules: ``report`` (table layout, records, JSON / markdown), ``prompts`` (the baselines'
prompts), ``envs`` (env kwargs, vector envs), ``runner`` (the methods, :func:`evaluate_policy`),
``loading`` (a model by path, :func:`evaluate_model`), ``greedy`` (the trainers' in-run
``eval_*`` metrics, :func:`~agents.evaluation.greedy.evaluate_greedy`). Nothing here imports
torch until a model is loaded.
"""

from agents.evaluation.envs import (
    PROTOCOL_KEYS,
    EvalSetupError,
    derived_env,
    env_kwargs_for,
    open_env,
    resolve_retriever,
)
from agents.evaluation.loading import LoadedModel, evaluate_model, load_model_for_eval
from agents.evaluation.prompts import (
    DIRECT_TEMPLATE,
    RAG_TEMPLATE,
    check_direct_template,
    check_rag_template,
    rag_dataset,
)
from agents.evaluation.report import (
    BASELINES,
    METHOD_LABELS,
    METHODS,
    PAPER_COLUMNS,
    TABLE_METRICS,
    EpisodeRecord,
    EvalReport,
    MethodResult,
    column_name,
    parse_methods,
)
from agents.evaluation.runner import evaluate_policy, run_method, run_oracle, run_policy

__all__ = [
    "BASELINES",
    "DIRECT_TEMPLATE",
    "METHODS",
    "METHOD_LABELS",
    "PAPER_COLUMNS",
    "PROTOCOL_KEYS",
    "RAG_TEMPLATE",
    "TABLE_METRICS",
    "EpisodeRecord",
    "EvalReport",
    "EvalSetupError",
    "LoadedModel",
    "MethodResult",
    "check_direct_template",
    "check_rag_template",
    "column_name",
    "derived_env",
    "env_kwargs_for",
    "evaluate_model",
    "evaluate_policy",
    "load_model_for_eval",
    "open_env",
    "parse_methods",
    "rag_dataset",
    "resolve_retriever",
    "run_method",
    "run_oracle",
    "run_policy",
]
