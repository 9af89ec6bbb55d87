"""longrl: reinforcement learning for vision-language models on long videos."""

__version__ = "0.1.0"
