"""Math reward: format_weight * format + accuracy_weight * accuracy.

The predicted answer is the last `\\boxed{...}` (nested braces allowed) in the response's answer
part (the `<answer>` block when there is one, else the whole response), else the text after a
"final answer is" / "Final Answer:" phrase, else the `<answer>` block itself. It is compared with
the reference TEXT (a free-text row's answer, or the correct option's text: `\\boxed{6}` scores
when option C is "6"); on a row with options the correct letter ("C") counts too. Equivalence uses
math-verify (symbolic and numeric: "\\frac{1}{2}" equals "0.5"), after a normalized string
comparison.
"""

from __future__ import annotations

import functools
import re
import threading

from longrl.rewards.multiple_choice import extract_choice, parse_response
from longrl.rewards.registry import RewardInput, register_reward

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is|:)?\s*[:=]?\s*(.+)", re.IGNORECASE)


def _math_verify():
    try:
        import math_verify
    except ImportError as error:
        raise ImportError(
            "the math reward needs the math-verify package: pip install 'longrl[math]' (or pip install math-verify)"
        ) from error
    return math_verify


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces, or None."""
    best: tuple[int, str] | None = None
    for command in _BOX_COMMANDS:
        start = text.rfind(command + "{")
        while start != -1:
            i = start + len(command) + 1
            depth = 1
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            if depth == 0:
                if best is None or start > best[0]:
                    best = (start, text[start + len(command) + 1 : i - 1].strip())
                break
            start = text.rfind(command + "{", 0, start)  # unbalanced (cut off): try the one before
    return best[1] if best else None


def extract_math_answer(response: str) -> str | None:
    parsed = parse_response(response)
    region = parsed.answer if parsed.answer_source in ("tag", "unclosed_tag") else response
    boxed = extract_boxed(region)
    if boxed is not None:
        return boxed
    phrases = _FINAL_ANSWER.findall(region)
    if phrases:
        return phrases[-1].strip().rstrip(".").strip("$ ").strip()
    if parsed.answer_source in ("tag", "unclosed_tag") and parsed.answer:
        return parsed.answer.strip("$ ").strip()
    return None


def normalize_math_text(text: str) -> str:
    text = extract_boxed(text) or text
    text = re.sub(r"\\(?:left|right|!|,|;|:|\s)", "", text)
    text = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.replace("$", "").replace(" ", "").rstrip(".").lower()
    return text


def _wrap(expression: str) -> str:
    return expression if "$" in expression or "\\boxed" in expression else f"${expression}$"


def math_equal(prediction: str, reference: str) -> bool:
    """Whether two final answers are mathematically the same."""
    if normalize_math_text(prediction) == normalize_math_text(reference):
        return True
    # Words are not algebra: math-verify would read "abc" as a*b*c.
    if any(re.fullmatch(r"[A-Za-z][A-Za-z ]+", s.strip()) for s in (prediction, reference)):
        return False
    mv = _math_verify()
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = mv.parse(_wrap(reference), parsing_timeout=timeout) or mv.parse(reference, parsing_timeout=timeout)
    pred = mv.parse(_wrap(prediction), parsing_timeout=timeout) or mv.parse(prediction, parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(mv.verify(gold, pred, timeout_seconds=timeout))


def _is_correct(prediction: str, sample: RewardInput) -> bool:
    if math_equal(prediction, sample.answer_text):
        return True
    if not sample.options:
        return False
    gold = extract_choice(sample.answer, sample.options)  # a row with options also accepts its letter
    return gold is not None and extract_choice(prediction, sample.options) == gold


def math_reward(sample: RewardInput, format_weight: float = 0.1, accuracy_weight: float = 0.9) -> dict[str, float]:
    fmt = 1.0 if parse_response(sample.response).format_ok else 0.0
    prediction = extract_math_answer(sample.response)
    accuracy = 1.0 if prediction is not None and _is_correct(prediction, sample) else 0.0
    return {"score": format_weight * fmt + accuracy_weight * accuracy, "format": fmt, "accuracy": accuracy}


@register_reward("math", factory=True)
def make_math_reward(cfg):
    _math_verify()  # a missing package fails when the reward is built, not on every sample
    return functools.partial(math_reward, format_weight=cfg.format_weight, accuracy_weight=cfg.accuracy_weight)
