"""A run's infrastructure, apart from the training loops: setting a run up from its config
(:mod:`~longrl.infra.setup`), claiming its directory (:mod:`~longrl.infra.run_dir`), crash-safe
checkpoints (:mod:`~longrl.infra.checkpoint`), the Hugging Face side files
(:mod:`~longrl.infra.hf_files`) and export (:mod:`~longrl.infra.export`), metrics
(:mod:`~longrl.infra.metrics`), the report (:mod:`~longrl.infra.report`) and the non-finite guard
(:mod:`~longrl.infra.guard`).

``train/`` and ``eval/`` import from here; nothing here imports ``train/``, ``eval/`` or
``rollout/``."""
