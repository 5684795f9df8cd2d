"""search-env: Gymnasium environments for training LLMs to reason with search."""

from search_env.env import EpisodeOverError, SearchQAEnv
from search_env.protocol import ProtocolConfig
from search_env.registration import ENV_IDS, register_envs
from search_env.types import Passage, QAExample
from search_env.vector import SearchQAVectorEnv

__version__ = "0.1.0"

register_envs()

__all__ = [
    "ENV_IDS",
    "EpisodeOverError",
    "Passage",
    "ProtocolConfig",
    "QAExample",
    "SearchQAEnv",
    "SearchQAVectorEnv",
    "__version__",
]
