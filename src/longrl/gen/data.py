"""Prompts: a text file (one prompt a line) or synthetic ones, held-out prompts never trained on."""

from __future__ import annotations

import random
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "brown"]
OBJECTS = ["cat", "dog", "horse", "bird", "car", "boat", "house", "tree", "flower", "apple", "cup", "chair"]
PLACES = ["city", "forest", "beach", "field", "street", "room", "garden", "lake"]
STYLES = ["a photo of", "a painting of", "a drawing of", "a render of"]


def synthetic_prompts() -> list[str]:
    """Every "<style> a <colour> <object> in the <place>" (3,840 prompts), in a fixed order."""
    return [f"{s} a {c} {o} in the {p}" for s in STYLES for c in COLOURS for o in OBJECTS for p in PLACES]


def read_prompts(path: str) -> list[str]:
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompts: write one prompt a line")
    return prompts


def split_prompts(train_path: str, eval_path: str, num_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out). Synthetic: a seeded shuffle, the first ``num_eval`` held out."""
    if train_path:
        train = read_prompts(train_path)
        held_out = read_prompts(eval_path) if eval_path else train[:0]
        return train, held_out[:num_eval] if num_eval else held_out
    prompts = synthetic_prompts()
    random.Random(seed).shuffle(prompts)
    held_out = read_prompts(eval_path)[:num_eval] if eval_path else prompts[:num_eval]
    return [p for p in prompts if p not in set(held_out)], held_out


class PromptSampler:
    """Draws prompts without replacement, epoch by epoch; its position is checkpointed (exact resume)."""

    def __init__(self, prompts: list[str], seed: int):
        self.prompts, self.seed = prompts, seed
        self.epoch, self.cursor = 0, 0

    def _order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def draw(self, k: int) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            order = self._order()
            take = order[self.cursor : self.cursor + k - len(out)]
            out += [self.prompts[i] for i in take]
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
