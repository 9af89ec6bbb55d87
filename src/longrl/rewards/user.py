"""User reward functions: "path/to/file.py:function" (or "package.module:function")."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path


def load_user_function(spec: str) -> Callable:
    """Imports the file (or module) of `spec` and returns its function. The function takes one
    `longrl.rewards.RewardInput` and returns a float or a dict with a "score"."""
    location, _, name = spec.rpartition(":")
    if not location or not name:
        raise ValueError(f"reward function {spec!r} must look like 'path/to/file.py:function'")
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"reward file {location} not found (looked at {path}; from the reward "
                f"entry {spec!r}): fix the path in reward.functions"
            )
        # A name unique to the file, so two files called rewards.py do not replace each other.
        module_name = f"longrl_user_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec is not None and module_spec.loader is not None  # a .py path always has a loader
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise ImportError(f"importing reward file {path} failed: {type(error).__name__}: {error}") from error
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ImportError(f"reward module {location!r} (from {spec!r}) cannot be imported: {error}") from error

    fn = getattr(module, name, None)
    if fn is None:
        defined = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise AttributeError(
            f"reward file {location} has no function {name!r}; it defines: "
            f"{', '.join(defined) or 'no public functions'}"
        )
    if not callable(fn):
        raise TypeError(f"{name!r} in {location} is a {type(fn).__name__}, not a function")
    if inspect.isclass(fn):
        raise TypeError(f"{name!r} in {location} is a class; give a function fn(sample) -> float | dict")
    return fn
