"""QA examples as a verl training file, in Search-R1's parquet row format.

Each row holds ``data_source``, ``prompt`` (one user message: the protocol's template with
the question), ``ability``, ``reward_model.ground_truth.target`` (the gold answers) and
``extra_info`` (``split``, ``index``, ``question``, and the ``tools_kwargs`` that give
verl's tool path its ground truth). `SearchR1AgentLoop` and `load_qa` read such rows back.

``python -m agents.verl.data --env-id SearchQA-Synth-v0 --split train --out train.parquet``
writes the dataset of any registered env id (offline for the synthetic world).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search_env.protocol import ProtocolConfig, clean_question
from search_env.types import QAExample


def verl_row(
    example: QAExample, index: int, split: str, data_source: str, protocol: ProtocolConfig
) -> dict[str, Any]:
    """One example as a verl / Search-R1 parquet row."""
    question = clean_question(example.question)
    golds = list(example.golden_answers)
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": protocol.template.format(question=question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": golds}},
        "extra_info": {
            "split": split,
            "index": index,
            "question": question,
            "tools_kwargs": {"search": {"create_kwargs": {"ground_truth": {"target": golds}}}},
        },
    }


def write_verl_parquet(
    examples: Sequence[QAExample],
    path: str | Path,
    *,
    split: str = "train",
    data_source: str = "search_env",
    protocol: ProtocolConfig | None = None,
) -> Path:
    """Write ``examples`` to ``path`` (parent folders made); returns the path.

    Raises:
        ValueError: If ``examples`` is empty.
        ImportError: Without pyarrow (``pip install 'search-env[data]'``).
    """
    if not examples:
        raise ValueError("no examples to write")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - verl pulls pyarrow in
        raise ImportError("writing parquet needs pyarrow: pip install 'search-env[data]'") from e
    protocol = protocol or ProtocolConfig()
    rows = [verl_row(e, i, split, data_source, protocol) for i, e in enumerate(examples)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="SearchQA-Synth-v0")
    parser.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments of gym.make")
    parser.add_argument("--split", default="train", help="passed to gym.make as split=")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the env ids)

    env = gym.make(args.env_id, split=args.split, **json.loads(args.env_kwargs))
    examples = list(env.unwrapped.dataset)[: args.limit]  # type: ignore[attr-defined]
    name = args.env_id.lower()
    path = write_verl_parquet(examples, args.out, split=args.split, data_source=name)
    print(f"wrote {len(examples)} rows to {path}")


if __name__ == "__main__":
    main()
