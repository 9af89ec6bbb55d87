"""Text-only decoders: Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) and Llama-architecture checkpoints
(``LlamaForCausalLM``: Llama 3.x, SmolLM2, ...).

Both keep their decoder stack at ``model.model`` and take 1-D positions; Qwen2 has q/k/v biases,
Llama none, and many Llama checkpoints tie the LM head to the token embeddings (transformers
shares the tensor, and so does everything here). The layer math is ``longrl.models.decoder``'s.
"""

from __future__ import annotations

from typing import Any, cast

from longrl.models.base import ModelFamily
from longrl.models.tokenizer import train_tokenizer


def _ids(tokenizer: Any, token: str) -> int:
    return cast(int, tokenizer.convert_tokens_to_ids(token))


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
        return config_class(
            vocab_size=len(tokenizer),
            hidden_size=tiny.hidden_size,
            intermediate_size=tiny.intermediate_size,
            num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads,
            num_key_value_heads=tiny.num_kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=_ids(tokenizer, "<|endoftext|>"),
            eos_token_id=_ids(tokenizer, "<|im_end|>"),
            pad_token_id=_ids(tokenizer, "<|endoftext|>"),
            tie_word_embeddings=self._tied,
        )


QWEN2 = CausalLM("qwen2", "Qwen2ForCausalLM", "Qwen2Config", tied=False)
LLAMA = CausalLM("llama", "LlamaForCausalLM", "LlamaConfig", tied=True)
