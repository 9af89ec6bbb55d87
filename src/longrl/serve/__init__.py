"""``longrl serve``: an OpenAI-compatible HTTP server of a policy, batched on the rollout engine.

FastAPI and uvicorn are the ``serve`` extra; ``longrl.serve.app`` imports them, this package does not,
so the rest of the ``longrl`` command works without them.
"""
