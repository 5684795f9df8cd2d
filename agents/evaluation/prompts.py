"""The baselines' prompts: direct answer, and RAG with the documents in the prompt."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from search_env.protocol import clean_question, format_documents
from search_env.types import QAExample

DIRECT_TEMPLATE = (
    "Answer the given question directly, without searching. You can reason inside <think> "
    "and </think> first. Then provide the answer inside <answer> and </answer>, without "
    "detailed illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
"""The direct-answer baseline's prompt: Search-R1's tags and answer example, no search
engine. ``{question}`` is the cleaned question (stripped, ending in '?')."""

RAG_TEMPLATE = (
    "Answer the given question using the documents below. You can reason inside <think> "
    "and </think> first. Then provide the answer inside <answer> and </answer>, without "
    "detailed illustrations. For example, <answer> Beijing </answer>.\n"
    "Documents:\n{documents}Question: {question}\n"
)
"""The RAG baseline's prompt. ``{documents}`` is the top-k passages retrieved with the
question, one ``Doc {i}(Title: {title}) {text}`` line each (the protocol's
``doc_format``, as in an information block); ``{question}`` as in :data:`DIRECT_TEMPLATE`.
Must end with ``{question}\\n``."""


def check_direct_template(template: str) -> None:
    """Raise ValueError unless ``template`` can be the direct prompt."""
    if "{question}" not in template:
        raise ValueError("the direct template must contain {question}")


def check_rag_template(template: str) -> None:
    """Raise ValueError unless ``template`` can be the RAG prompt (see :func:`rag_dataset`)."""
    if not template.endswith("{question}\n") or "{documents}" not in template:
        raise ValueError("a RAG template must contain {documents} and end with '{question}\\n'")
    if template != template.lstrip():
        raise ValueError("a RAG template must not start with whitespace")


def rag_dataset(
    vec: Any,
    indices: Sequence[int],
    template: str = RAG_TEMPLATE,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[list[QAExample], list[tuple[str, ...]]]:
    """Each question with its top-k documents already in its text, and the doc ids.

    The retriever is queried with the stripped question (cut to ``max_query_chars``), in
    batches. The returned examples' ``question`` is ``template`` filled in minus its final
    newline, so an env with template ``"{question}\\n"`` shows exactly the filled template.
    """
    from tqdm.auto import tqdm

    check_rag_template(template)
    protocol = vec.envs[0].protocol
    examples: list[QAExample] = []
    doc_ids: list[tuple[str, ...]] = []
    with tqdm(total=len(indices), desc="rag retrieve", unit="q", disable=not progress) as bar:
        for lo in range(0, len(indices), batch_size):
            chunk = [vec.dataset[i] for i in indices[lo : lo + batch_size]]
            queries = [e.question.strip()[: protocol.max_query_chars] for e in chunk]
            results = vec.retriever.search(queries, protocol.topk)
            if len(results) != len(queries):
                raise RuntimeError(
                    f"the retriever returned {len(results)} result lists for {len(queries)} queries"
                )
            for example, passages in zip(chunk, results):
                text = template.format(
                    documents=format_documents(passages, protocol),
                    question=clean_question(example.question),
                )
                examples.append(dataclasses.replace(example, question=text[:-1]))
                doc_ids.append(tuple(p.id for p in passages))
            bar.update(len(chunk))
    return examples, doc_ids
