"""Generation RL: Flow-GRPO for flow-matching text-to-image (Stable Diffusion 3) and text-to-video
(Wan) models through diffusers. The SDE sampler with per-step log-probabilities (``sde``,
``sampler``), the clipped-ratio loss over a subset of the denoising steps (``loss``, reusing
``longrl.rl``), image rewards registered in ``longrl.rewards`` (``rewards``), and the loop
(``train``). Importing this package does not import diffusers; its modules do."""
