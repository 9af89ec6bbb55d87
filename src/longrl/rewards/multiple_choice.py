"""Multiple-choice reward: format_weight * format + accuracy_weight * accuracy.

Format: the response is exactly `<think>...</think>` then `<answer>...</answer>`, whitespace
between and around allowed, each tag once, a non-empty answer.

Answer text: the `<answer>` block (several different blocks are read together, so hedging across
them is ambiguous); an `<answer>` never closed (cut off at the length limit)
gives the text after it. Without any answer tag the last non-empty line after `</think>` (or of the
whole response) is used, so a correct bare answer still earns accuracy (not format). A `<think>`
that is never closed means the model ran out of tokens mid-thought: no answer.

Letter extraction (`extract_choice`) accepts "B", " b ", "(B)", "B.", "B) text", "Answer: B",
"The answer is (B).", "\\boxed{B}", and the text of an option ("the red cube"). Several different
letters ("A or B") are ambiguous and count as no answer; accuracy needs an unambiguous answer.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from longrl.rewards.registry import RewardInput, register_reward

_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass
class ParsedResponse:
    think: str
    answer: str
    format_ok: bool
    answer_source: str = "tag"  # tag | unclosed_tag | last_line | none


def parse_response(text: str) -> ParsedResponse:
    think_match = _THINK_BLOCK.search(text)
    think = think_match.group(1).strip() if think_match else ""
    match = _FORMAT.fullmatch(text)
    if match and all(text.count(tag) == 1 for tag in _TAGS) and match.group(2).strip():
        return ParsedResponse(match.group(1).strip(), match.group(2).strip(), True, "tag")
    blocks = [block.strip() for block in _ANSWER_BLOCK.findall(text)]
    if blocks:
        # Several different answer blocks are read together, so hedging ("A" then "B") is ambiguous.
        return ParsedResponse(think, "\n".join(dict.fromkeys(blocks)), False, "tag")
    if "<answer>" in text:
        return ParsedResponse(think, text.rsplit("<answer>", 1)[1].strip(), False, "unclosed_tag")
    if text.rfind("<think>") > text.rfind("</think>"):
        return ParsedResponse(think, "", False, "none")  # cut off mid-thought
    tail = text.rsplit("</think>", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ParsedResponse(think, "", False, "none")
    return ParsedResponse(think, lines[-1], False, "last_line")


# --- letter extraction -------------------------------------------------------------------------

_LATEX_WRAPPER = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_ONLY_LETTER = re.compile(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?")
# "B) text", "(B) text", "B. text", "B: text" (the delimiter is followed by space after . and :,
# so "e.g. x" is not read as option E)
_LEADING_LETTER = re.compile(r"[(\[]?([A-Za-z])(?:[)\]]\s*|[.:]\s+)(.+)", re.DOTALL)
_PREFIX = re.compile(
    r"(?:(?:so|thus|therefore|hence)\s*,?\s*)?(?:the\s+|my\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?"
    r"(?:answer|option|choice)\s*(?:is|would be|should be)?\s*[:=]?\s*(?:option|choice)?\s*[:=]?\s*",
    re.IGNORECASE,
)
_LETTER_LIST = re.compile(r"(?:or|and|,|/|&)\s*[(\[]?[A-Za-z](?![A-Za-z])", re.IGNORECASE)
_CONNECTORS = {"or", "and", "nor", "vs", "versus", "then"}
_CAPITAL_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")


def _valid_letters(options: list[str] | None) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[: len(options)] if options else letters


def _clean(text: str) -> str:
    text = _LATEX_WRAPPER.sub(r"\1", text)
    text = re.sub(r"[*`$]", "", text)
    return text.strip().strip("\"'“”‘’").strip()


def _normalize_text(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _option_texts(options: list[str]) -> list[str]:
    """Normalized option texts, without a leading "A." / "(A)" label that matches their position."""
    texts = []
    for letter, option in zip(_valid_letters(options), options):
        labelled = re.match(rf"\s*[(\[]?{letter}(?:[)\]]|[.:])\s*(.*)", option, re.IGNORECASE | re.DOTALL)
        texts.append(_normalize_text(labelled.group(1) if labelled else option))
    return texts


def _match_option_text(text: str, options: list[str] | None) -> tuple[str | None, bool]:
    """(letter, exact): the option whose text equals the answer, else the one option whose text
    appears in it as whole words (options contained in another matched option are set aside)."""
    if not options:
        return None, False
    letters = _valid_letters(options)
    texts = _option_texts(options)
    answer = _normalize_text(text)
    if not answer:
        return None, False
    exact = [letters[i] for i, t in enumerate(texts) if t and t == answer]
    if len(exact) == 1:
        return exact[0], True
    found = [i for i, t in enumerate(texts) if t and f" {t} " in f" {answer} "]
    outermost = [i for i in found if not any(j != i and f" {texts[i]} " in f" {texts[j]} " for j in found)]
    return (letters[outermost[0]], False) if len(outermost) == 1 else (None, False)


def _letter_alone(text: str, valid: str) -> str | None | bool:
    """The letter if `text` is just a letter ("b", "(B)", "B."); False if it is not just one."""
    match = _ONLY_LETTER.fullmatch(text)
    if not match:
        return False
    letter = match.group(1).upper()
    return letter if letter in valid else None


def extract_choice(text: str, options: list[str] | None = None) -> str | None:
    """The chosen option letter (upper case) in `text`, or None when absent or ambiguous."""
    valid = _valid_letters(options)
    text = _clean(text)
    if not text:
        return None
    prefix = _PREFIX.match(text)  # "Answer: B", "The answer is (B)." -> "B", "(B)."
    core = _clean(text[prefix.end() :]) if prefix else text

    alone = _letter_alone(core, valid)
    if not isinstance(alone, bool):
        return alone
    leading = _LEADING_LETTER.fullmatch(core)
    if leading and leading.group(1).upper() in valid:
        letter, rest = leading.group(1).upper(), leading.group(2)
        if _LETTER_LIST.match(rest):
            return None  # "(B) or (C)"
        by_text, exact = _match_option_text(rest, options)
        # "B) the red cube" where the red cube is option A contradicts itself
        return None if exact and by_text != letter else letter
    by_text, exact = _match_option_text(core, options)
    if exact:
        return by_text

    # Free text: letters standing alone, plus an option text it mentions. "A" and "I" followed by a
    # lower-case word are probably English ("A red cube", "I think"), so they count only when
    # nothing stronger is there.
    strong: set[str] = set()
    weak: set[str] = set()
    for match in _CAPITAL_LETTER.finditer(text):
        letter = match.group(1)
        if letter not in valid:
            continue
        next_word = re.match(r" ([a-z]+)", text[match.end() :])
        is_word = letter in "AI" and next_word is not None and next_word.group(1) not in _CONNECTORS
        (weak if is_word else strong).add(letter)
    by_text, _ = _match_option_text(text, options)
    if by_text is not None:
        strong.add(by_text)
    if len(strong) == 1:
        return strong.pop()
    if not strong and len(weak) == 1:
        return weak.pop()
    return None


def multiple_choice_reward(
    sample: RewardInput, format_weight: float = 0.1, accuracy_weight: float = 0.9
) -> dict[str, float]:
    if not sample.options:
        raise ValueError(
            f"the row has no options (a free-text answer, {sample.answer!r:.40}), so multiple_choice "
            "cannot score it: use reward.functions=[math] or [judge] for free-text rows"
        )
    gold = extract_choice(sample.answer, sample.options)
    if gold is None:
        raise ValueError(
            f"reference answer {sample.answer!r} is not an option letter or option text (options: {sample.options})"
        )
    parsed = parse_response(sample.response)
    fmt = 1.0 if parsed.format_ok else 0.0
    accuracy = 1.0 if extract_choice(parsed.answer, sample.options) == gold else 0.0
    return {"score": format_weight * fmt + accuracy_weight * accuracy, "format": fmt, "accuracy": accuracy}


@register_reward("multiple_choice", factory=True)
def make_multiple_choice_reward(cfg):
    return functools.partial(
        multiple_choice_reward, format_weight=cfg.format_weight, accuracy_weight=cfg.accuracy_weight
    )
