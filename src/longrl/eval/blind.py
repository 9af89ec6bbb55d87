"""Blind baselines: how far a model gets without reading the video.

A model that scores well above both really reads its input:

* ``majority``: each category's most common answer letter in the training rows, answered for every
  test row of that category (what a model that ignores video and question wording can reach);
* ``other_video``: the model itself, greedy, with every test row's video swapped for another test
  row's video of the same category (same question form, wrong evidence).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

from longrl.data.dataset import Example
from longrl.data.rows import Row


def majority_accuracy(train_rows: list[Row], test_rows: list[Row]) -> float:
    """Accuracy of answering each test row with its category's most common training answer."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in train_rows:
        counts[row.category][row.answer] += 1
    overall = Counter(row.answer for row in train_rows)
    hits = 0
    for row in test_rows:
        votes = counts.get(row.category) or overall
        hits += votes.most_common(1)[0][0] == row.answer
    return hits / max(len(test_rows), 1)


def swap_videos(examples: list[Example]) -> list[Example]:
    """Each example with the video of the next example of its category (cyclically).

    A category with a single example keeps its own video (nothing to swap with)."""
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_category[example.row.category].append(i)
    swapped = list(examples)
    for indices in by_category.values():
        for k, i in enumerate(indices):
            donor = examples[indices[(k + 1) % len(indices)]]
            swapped[i] = replace(examples[i], vision=donor.vision, video_embeds=donor.video_embeds)
    return swapped
