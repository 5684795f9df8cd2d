"""Data-parallel training over ranks started by ``torchrun``: FSDP2 sharding, the loop's
collectives, sharded checkpoints and weight gathering (see ``docs/distributed.md``).

Every function here also runs in a single process (``WORLD_SIZE`` unset), where the
collectives are no-ops, so a loop written against this API needs no special case.
"""

from agents.distributed.checkpoint import (
    load_dist_checkpoint,
    resume_dist_checkpoint,
    save_dist_checkpoint,
    verify_dist_checkpoint,
)
from agents.distributed.collectives import (
    MainProcessFilter,
    all_reduce_sum,
    all_succeed,
    broadcast_object,
    dp_aggregate,
    gather_objects,
    global_explained_variance,
    global_masked_whiten,
    loss_denominator,
    main_only,
    max_over_ranks,
    on_main,
    reduce_loss_stats,
    reduce_metrics,
)
from agents.distributed.context import (
    DistContext,
    DistributedInitError,
    context_from_env,
    init_distributed,
)
from agents.distributed.export import export_pretrained, full_state_dict
from agents.distributed.fsdp import gathered, reshard, shard_model, shard_module, shard_reference
from agents.distributed.gather import iter_full_state
from agents.distributed.slicing import (
    RankMinibatch,
    local_num_envs,
    rank_minibatches,
    rank_questions,
    rank_seed,
    shard_range,
)

__all__ = [
    "DistContext",
    "DistributedInitError",
    "MainProcessFilter",
    "RankMinibatch",
    "all_reduce_sum",
    "all_succeed",
    "broadcast_object",
    "context_from_env",
    "dp_aggregate",
    "export_pretrained",
    "full_state_dict",
    "gather_objects",
    "gathered",
    "global_explained_variance",
    "global_masked_whiten",
    "init_distributed",
    "iter_full_state",
    "load_dist_checkpoint",
    "local_num_envs",
    "loss_denominator",
    "main_only",
    "max_over_ranks",
    "on_main",
    "rank_minibatches",
    "rank_questions",
    "rank_seed",
    "reduce_loss_stats",
    "reduce_metrics",
    "reshard",
    "resume_dist_checkpoint",
    "save_dist_checkpoint",
    "shard_model",
    "shard_module",
    "shard_range",
    "shard_reference",
    "verify_dist_checkpoint",
]
