"""Distributed settings: the ``dist`` section of the run config."""

from __future__ import annotations

from dataclasses import dataclass

from longrl.config_utils import ConfigError


@dataclass
class DistConfig:
    dp: int = 0  # data-parallel ranks (each draws its own prompts); 0 = world size / dist.sp
    sp: int = 1  # sequence-parallel ranks per group (Ulysses over the packed group's tokens)
    fsdp: bool = True  # shard parameters, gradients and optimizer state over the dp ranks (FSDP2) when dp > 1
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: sharded parameters, gradients and optimizer state live in host memory
    reshard_after_forward: bool = True  # free each layer's gathered parameters after its forward (less memory, one more all-gather in backward)
    gather_chunks: int = 256  # per-sample items per piece when gathering to one rank (host memory stays bounded); 0 = all at once

    def resolved(self, world_size: int) -> DistConfig:
        """This config with ``dp`` filled in for ``world_size`` processes; raises ConfigError when
        ``dist.dp x dist.sp`` does not equal the world size."""
        if self.sp < 1:
            raise ConfigError(f"dist.sp={self.sp} must be >= 1")
        if self.dp < 0:
            raise ConfigError(f"dist.dp={self.dp} must be >= 1 (or 0 = world size / dist.sp)")
        if self.gather_chunks < 0:
            raise ConfigError(f"dist.gather_chunks={self.gather_chunks} must be >= 0 (0 = one piece)")
        dp = self.dp or world_size // self.sp
        if dp * self.sp != world_size or dp < 1:
            raise ConfigError(
                f"dist.dp x dist.sp = {self.dp or '?'} x {self.sp} does not match the world size {world_size} "
                f"(WORLD_SIZE, set by torchrun --nproc-per-node x --nnodes); set dist.dp and dist.sp so that "
                f"their product is {world_size}, or dist.dp=0 to fill it in"
            )
        return DistConfig(dp=dp, sp=self.sp, fsdp=self.fsdp, cpu_offload=self.cpu_offload,
                          reshard_after_forward=self.reshard_after_forward, gather_chunks=self.gather_chunks)
