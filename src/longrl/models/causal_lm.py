"""Text-only decoders: Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) and Llama-architecture checkpoints
(``LlamaForCausalLM``: Llama 3.x, SmolLM2, ...).

Both keep their decoder stack at ``model.model`` and take 1-D positions; Qwen2 has q/k/v biases,
Llama none, and many Llama checkpoints tie the LM head to the token embeddings (transformers
shares the tensor, and so does everything here). The layer math is ``longrl.models.decoder``'s.
"""

from __future__ import annotations

from typing import Any

from longrl.models.base import ModelFamily, tiny_text_fields
from longrl.models.tokenizer import train_tokenizer


class CausalLM(ModelFamily):
    def __init__(self, name: str, class_name: str, config_name: str, *, tied: bool):
        self.name = name
        self.model_types = (name,)
        self._class_name, self._config_name = class_name, config_name
        self._tied = tied  # the tiny model ties its LM head to the embeddings (as Llama 3.2 and SmolLM2 do)

    def model_class(self) -> Any:
        import transformers

        return getattr(transformers, self._class_name)

    def tiny_tokenizer(self, texts: list[str], vocab_size: int) -> Any:
        # transformers reloads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, with Qwen2's split
        return train_tokenizer(texts, vocab_size=vocab_size, qwen2_split=self.name == "qwen2")

    def tiny_config(self, tiny: Any, tokenizer: Any) -> Any:
        import transformers

        config_class = getattr(transformers, self._config_name)
        return config_class(**tiny_text_fields(tiny, tokenizer), tie_word_embeddings=self._tied)


QWEN2 = CausalLM("qwen2", "Qwen2ForCausalLM", "Qwen2Config", tied=False)
LLAMA = CausalLM("llama", "LlamaForCausalLM", "LlamaConfig", tied=True)
