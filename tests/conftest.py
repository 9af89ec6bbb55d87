"""Session-wide test settings."""

from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels run under Triton's CPU interpreter. The switch is read when a kernel
# is defined, so it is set here, before any test module can import longrl.rollout.kernels (a module
# importing it first would define compiled kernels, which the interpreter then refuses to call).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
