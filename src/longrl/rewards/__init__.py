"""Reward functions: multiple choice, math, an LLM judge, and user functions from a file."""

from longrl.rewards.config import RewardConfig
from longrl.rewards.model import RewardModel, build_reward
from longrl.rewards.multiple_choice import ParsedResponse, extract_choice, parse_response
from longrl.rewards.registry import RewardInput, RewardResult, register_reward, registered_rewards

__all__ = [
    "RewardConfig",
    "RewardInput",
    "RewardResult",
    "RewardModel",
    "build_reward",
    "register_reward",
    "registered_rewards",
    "extract_choice",
    "parse_response",
    "ParsedResponse",
]
