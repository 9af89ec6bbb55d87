"""Rollout (generation) configuration."""

from __future__ import annotations

from dataclasses import dataclass

from longrl import config_utils


@dataclass
class RolloutConfig:
    n: int = 8  # samples per prompt (the GRPO group size)
    temperature: float = 1.0  # softmax temperature; 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass, in (0, 1]; 1 = off
    top_k: int = 0  # sample among the k most likely tokens; 0 = off
    max_new_tokens: int = 96  # response length limit per sample
    # long prefixes are prefilled in chunks of this many tokens: the chunk bounds prefill's
    # activation memory (3B: ~2.5 GB at 32k, mostly the MLP's [chunk, 11008] x 3)
    prefill_chunk_tokens: int = 32768  # prefill chunk size in tokens (bounds prefill memory)
    max_prompts_per_batch: int = 16  # prompts decoded together
    max_batch_prefix_tokens: int = 0  # prefix tokens held per decode batch (0 = no limit)
    max_context_tokens: int = 0  # prompt + response token limit (0 = none; positions are always checked)
    cuda_graphs: bool = True  # capture the decode step on GPU
    compile: bool = True  # torch.compile the per-layer elementwise work on GPU
    use_triton: bool = True  # Triton fused decode-attention kernels on GPU
    # GPU: one q/k/v and one gate/up GEMM per layer, from copies of the live weights packed once
    # per generate call (transient memory: 3.6 GB for the 3B model in bf16, 8.5 GB for 7B)
    pack_weights: bool = True  # GPU: one packed q/k/v and one gate/up GEMM per layer
    finish_check_interval: int = 8  # decode steps between host checks for finished samples

    def __post_init__(self) -> None:
        config_utils.at_least(
            self, 1, "n", "max_new_tokens", "prefill_chunk_tokens", "max_prompts_per_batch", "finish_check_interval"
        )
        config_utils.at_least(self, 0, "temperature", "top_k", "max_batch_prefix_tokens", "max_context_tokens")
        config_utils.in_range(self, "top_p", 0, 1, low_open=True)
