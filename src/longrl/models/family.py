"""The model families longrl supports, chosen from a checkpoint's ``config.json`` ``model_type``.

An unsupported ``model_type`` is an error listing the supported ones: a checkpoint is never
loaded into another family's class (transformers would only warn and graft random weights on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longrl.config_utils import ConfigError
from longrl.models.base import ModelFamily
from longrl.models.causal_lm import LLAMA, QWEN2
from longrl.models.qwen2_5_omni import QWEN2_5_OMNI
from longrl.models.qwen2_5_vl import QWEN2_5_VL

FAMILIES: dict[str, ModelFamily] = {t: f for f in (QWEN2_5_VL, QWEN2_5_OMNI, QWEN2, LLAMA) for t in f.model_types}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


def family_named(model_type: str, where: str = "model_type") -> ModelFamily:
    family = FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(f"{where}={model_type!r} is not supported; longrl supports {supported()}")
    return family


def family_of(model_or_config: Any) -> ModelFamily:
    """The family of a loaded model (or its config), by ``config.model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    return family_named(getattr(config, "model_type", None) or type(config).__name__)


def model_type_at(path: str) -> str:
    """``model_type`` of the checkpoint at ``path`` (a local directory or a hub id)."""
    local = Path(path).expanduser() / "config.json"
    if local.is_file():
        try:
            model_type = json.loads(local.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise ConfigError(f"{local} is not a JSON object ({err}); the checkpoint's config.json is broken") from None
        if not isinstance(model_type, str):
            raise ConfigError(f"{local} has no model_type; longrl supports {supported()}")
        return model_type
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(path).model_type)
