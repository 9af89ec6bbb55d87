"""``longrl serve``: an OpenAI-compatible HTTP server of a policy, batched on the rollout engine."""

from longrl.serve.app import create_app, run_server
from longrl.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run_server"]
