"""The one chat template longrl trains and evaluates with.

The system turn asks for ``<think>...</think><answer>...</answer>``; the user turn holds the video
(or image) and the question, with lettered options when the row has them (a free-text row asks
for the answer itself). SFT targets and rewards follow the same form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from longrl.data.rows import Row, format_options

if TYPE_CHECKING:
    from longrl.data.dataset import Example
    from longrl.models.inputs import Prompt

SYSTEM_PROMPT = "Think step by step inside <think> </think>, then give the option letter inside <answer> </answer>."
FREE_TEXT_SYSTEM_PROMPT = (
    "Think step by step inside <think> </think>, then give the final answer inside <answer> </answer>."
)


def system_prompt(row: Row) -> str:
    return SYSTEM_PROMPT if row.options else FREE_TEXT_SYSTEM_PROMPT


def question_text(row: Row) -> str:
    return f"{row.question}\n{format_options(row.options)}" if row.options else row.question


def messages_for(row: Row) -> list[dict]:
    """Chat messages of ``row``: a row with a video or image gets a list of parts, a text-only row
    plain string content (text-only checkpoints' chat templates, Qwen2.5's and Llama 3's, print
    ``content`` as it is)."""
    content: str | list[dict] = question_text(row)
    if row.video or row.image:
        content = [{"type": "video" if row.video else "image"}, {"type": "text", "text": question_text(row)}]
    return [
        {"role": "system", "content": system_prompt(row)},
        {"role": "user", "content": content},
    ]


def target_text(row: Row) -> str:
    """The SFT target: the reasoning chain, then the answer (letter or text; the trainer adds the end token)."""
    return f"<think>{row.reasoning}</think><answer>{row.answer}</answer>"


def corpus_texts(rows: list[Row]) -> list[str]:
    """Texts a tokenizer for these rows should know (the tiny model trains its own on them)."""
    texts = [SYSTEM_PROMPT, "system user assistant"]
    if any(not row.options for row in rows):  # only then: the tokenizer of option-only data stays as it was
        texts.append(FREE_TEXT_SYSTEM_PROMPT)
    for row in rows:
        texts.append(question_text(row))
        texts.append(target_text(row))
    return texts


def encode_prompts(model, tokenizer, examples: list[Example]) -> list[Prompt]:
    """One Prompt per :class:`~longrl.data.dataset.Example` in this chat template: tokens, M-RoPE
    positions, and one vision-tower pass (or the example's cached embeddings)."""
    from longrl.models.adapter import build_prompt  # transformers loads only when prompts are built

    return [
        build_prompt(
            model, tokenizer, messages_for(e.row), e.vision, video_embeds=e.video_embeds, meta={"id": e.row.id}
        )
        for e in examples
    ]
