"""The one chat template longrl trains and evaluates with.

The system turn asks for ``<think>...</think><answer>...</answer>``; the user turn holds the video
(or image) and the question with lettered options. SFT targets and rewards follow the same form.
"""

from __future__ import annotations

from longrl.data.rows import Row, format_options

SYSTEM_PROMPT = "Think step by step inside <think> </think>, then give the option letter inside <answer> </answer>."


def question_text(row: Row) -> str:
    return f"{row.question}\n{format_options(row.options)}"


def messages_for(row: Row) -> list[dict]:
    content: list[dict] = []
    if row.video:
        content.append({"type": "video"})
    elif row.image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": question_text(row)})
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]


def target_text(row: Row) -> str:
    """The SFT target: the reasoning chain, then the answer letter (the end token is added by the trainer)."""
    return f"<think>{row.reasoning}</think><answer>{row.answer}</answer>"


def corpus_texts(rows: list[Row]) -> list[str]:
    """Texts a tokenizer for these rows should know (the tiny model trains its own on them)."""
    texts = [SYSTEM_PROMPT, "system user assistant"]
    for row in rows:
        texts.append(question_text(row))
        texts.append(target_text(row))
    return texts
