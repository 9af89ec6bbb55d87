"""A seeded offline image task for Qwen2.5-VL: one coloured square on a plain background, asked
about its colour or its position, multiple choice, in longrl's row schema (``image`` rows).

Two categories, four options each in a fixed order (the easy form a tiny model learns from scratch
in CPU minutes; the answer letter is the only thing to read from the picture):

    Color     "What color is the square?"   red / green / blue / yellow
    Position  "Where is the square?"        top left / top right / bottom left / bottom right

The square's colour, corner and size, and the background's gray, are drawn per row; a little
pixel noise keeps two images of the same answer apart. Rows and images are a pure function of
(seed, split, index): the same arguments write the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from longrl.data.image import write_png
from longrl.data.rows import LETTERS, Row, save_rows

SHAPES_VERSION = 1  # bump when the generated content changes
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
CORNERS = ("top left", "top right", "bottom left", "bottom right")
CATEGORIES = ("Color", "Position")


@dataclass
class ShapesConfig:
    out_dir: str
    num_train: int = 600
    num_test: int = 200
    size: int = 56  # image side in pixels (56: 4 x 4 patches of 14, 4 tokens after the 2 x 2 merge)
    seed: int = 0

    def validate(self) -> None:
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(f"num_train={self.num_train}, num_test={self.num_test}: both must be >= 1")
        if self.size < 28:
            raise ValueError(f"size={self.size}: choose >= 28 (two patches a side)")


def draw_image(rng: np.random.Generator, size: int, color: str, corner: str) -> np.ndarray:
    """uint8 RGB [size, size, 3]: a gray background, the square inside ``corner``'s quadrant."""
    gray = int(rng.integers(90, 170))
    image = np.full((size, size, 3), gray, dtype=np.int16)
    half = size // 2
    side = int(rng.integers(half // 2, half - 1))
    top = int(rng.integers(0, half - side + 1)) + (half if corner.startswith("bottom") else 0)
    left = int(rng.integers(0, half - side + 1)) + (half if corner.endswith("right") else 0)
    image[top : top + side, left : left + side] = COLORS[color]
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def make_row(cfg: ShapesConfig, split: str, index: int) -> Row:
    """Row ``index`` of ``split``; writes its image under ``cfg.out_dir/images/``."""
    rng = np.random.default_rng([cfg.seed, {"train": 0, "test": 1}[split], index, SHAPES_VERSION])
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    corner = CORNERS[int(rng.integers(len(CORNERS)))]
    category = CATEGORIES[index % len(CATEGORIES)]
    image = Path("images") / f"{split}_{index:05d}.png"
    write_png(Path(cfg.out_dir) / image, draw_image(rng, cfg.size, color, corner))
    if category == "Color":
        question, options, truth = "What color is the square?", list(COLORS), color
        reasoning = f"The square in the picture is {color}."
    else:
        question, options, truth = "Where is the square?", list(CORNERS), corner
        reasoning = f"The square sits in the {corner} of the picture."
    return Row(
        id=f"{split}-{index:05d}",
        video=None,
        image=image.as_posix(),
        question=question,
        options=options,
        answer=LETTERS[options.index(truth)],
        reasoning=reasoning,
        category=category,
    )


def generate_shapes(cfg: ShapesConfig) -> tuple[Path, Path]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``images/`` under ``cfg.out_dir``; returns the two
    row files (image paths in them are relative to their folder)."""
    cfg.validate()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out / "train.jsonl", out / "test.jsonl"
    save_rows([make_row(cfg, "train", i) for i in range(cfg.num_train)], train_path)
    save_rows([make_row(cfg, "test", i) for i in range(cfg.num_test)], test_path)
    record = {**asdict(cfg), "version": SHAPES_VERSION}
    record.pop("out_dir")
    (out / "shapes.json").write_text(json.dumps(record, indent=2) + "\n")
    return train_path, test_path
