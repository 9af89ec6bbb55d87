"""The generation engine: chunked prefill, one shared prefix KV per prompt, cascade decode."""

from longrl.rollout.config import RolloutConfig
from longrl.rollout.engine import generate
from longrl.rollout.sampling import Sample, SamplingParams

__all__ = ["RolloutConfig", "Sample", "SamplingParams", "generate"]
