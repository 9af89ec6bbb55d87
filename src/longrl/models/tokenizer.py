"""A small byte-level BPE tokenizer trained in-process, with Qwen2.5-VL's special tokens.

The offline default has no hub to download Qwen's tokenizer from, so the tiny model gets its own,
trained on the run's text in a second and saved beside the weights: the run reloads offline, and
a real checkpoint brings its own tokenizer instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen2.5-VL's special tokens, spelled as in the real tokenizer so prompts read the same.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning tags are whole tokens here so a tiny model learns the format quickly; they are
# ordinary (decoded) text, not special tokens.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat template, reduced to what longrl sends: a system turn, then user turns whose
# content is a string or a list of {"type": "text"|"video"|"image"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    *,
    qwen2_split: bool = False,
    special_tokens: list[str] = SPECIAL_TOKENS,
    template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; any string still encodes (bytes are the fallback).

    ``qwen2_split``: Qwen2's own normalizer and pre-tokenizer (NFC, its split pattern: digits one
    by one, then byte-level), as the tiny Qwen2 text model needs: transformers loads a checkpoint
    of model_type ``qwen2`` with ``Qwen2Tokenizer``, which rebuilds exactly these from its own code
    (ignoring tokenizer.json's), so a tokenizer trained otherwise would split text differently
    once reloaded."""
    tok = Tokenizer(models.BPE())
    if qwen2_split:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Added, not special: decoding with skip_special_tokens keeps them, so rewards see the format.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=special_tokens[0],
        additional_special_tokens=special_tokens[1:],
    )
    fast.chat_template = template
    return fast
