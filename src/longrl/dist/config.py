"""Distributed settings: the ``dist`` section of the run config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from longrl.config_utils import ConfigError


@dataclass
class DistConfig:
    dp: int = 0  # data-parallel ranks (each draws its own prompts); 0 = world size / dist.sp
    sp: int = 1  # sequence-parallel ranks per group (Ulysses over the packed group's tokens)
    sp_decode: str = "gathered"  # rollout decode under dist.sp > 1: gathered (prefix KV all-gathered, every sp rank decodes as one process) or sharded (KV kept by heads, one all-gather per layer)
    sp_shard_vision: bool = True  # under dist.sp > 1 each sp rank encodes its share of the frames (exact; false: every rank encodes all of them)
    fsdp: bool = True  # shard parameters, gradients and optimizer state over all dp x sp ranks (FSDP2); needed (true) when more than one process runs
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: sharded params, grads, optimizer state in host memory
    reshard_after_forward: bool = True  # free gathered layer params after forward (less memory, +1 all-gather)
    gather_chunks: int = 256  # per-sample items per piece of a gather to one rank (bounded memory); 0 = one piece

    def resolved(self, world_size: int) -> DistConfig:
        """This config with ``dp`` filled in for ``world_size`` processes; raises ConfigError when
        ``dist.dp x dist.sp`` does not equal the world size."""
        if self.sp < 1:
            raise ConfigError(f"dist.sp={self.sp} must be >= 1")
        if self.dp < 0:
            raise ConfigError(f"dist.dp={self.dp} must be >= 1 (or 0 = world size / dist.sp)")
        if self.sp_decode not in ("gathered", "sharded"):
            raise ConfigError(f"dist.sp_decode={self.sp_decode!r}: use gathered or sharded")
        if self.gather_chunks < 0:
            raise ConfigError(f"dist.gather_chunks={self.gather_chunks} must be >= 0 (0 = one piece)")
        dp = self.dp or world_size // self.sp
        if dp * self.sp != world_size or dp < 1:
            raise ConfigError(
                f"dist.dp x dist.sp = {self.dp or '?'} x {self.sp} does not match the world size {world_size} "
                f"(WORLD_SIZE, set by torchrun --nproc-per-node x --nnodes); set dist.dp and dist.sp so that "
                f"their product is {world_size}, or dist.dp=0 to fill it in"
            )
        if world_size > 1 and not self.fsdp:
            raise ConfigError(
                f"dist.fsdp=false with {world_size} processes: gradients are reduced over the ranks by "
                "FSDP2, so without it every rank would train on its own; set dist.fsdp=true"
            )
        return dataclasses.replace(self, dp=dp)
