"""Scale out: process group and ("dp", "sp") mesh, FSDP2, data parallel, chunked gathers.

One run, in order::

    env = init_distributed(cfg.dist, cfg.trainer.device)   # torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    parallelize(model, env.mesh, env.config)               # SP first (when dist.sp > 1), FSDP2 after
    with gathered(model):                                  # rollout on the live, unsharded weights
        samples = generate(model, prompts, params)
"""

from longrl.dist.config import DistConfig
from longrl.dist.env import DistEnv, current, init_distributed, shutdown
from longrl.dist.parallelize import gathered, parallelize, root_forward

__all__ = [
    "DistConfig",
    "DistEnv",
    "current",
    "gathered",
    "init_distributed",
    "parallelize",
    "root_forward",
    "shutdown",
]
