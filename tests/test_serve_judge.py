"""The judge reward pointed at ``longrl serve``: a tiny model taught to grade, served over HTTP,
scores open-ended answers through JudgeClient (the same path a training run's reward takes)."""

from __future__ import annotations

from longrl.models.adapter import load_model, save_pretrained
from longrl.models.config import ModelConfig
from longrl.rewards import RewardConfig, RewardInput, build_reward
from longrl.rewards.judge import SYSTEM_PROMPT, judge_messages
from serve_helpers import serve_tiny, teach

CASES = [  # (question, reference, answer, the grade the judge is taught)
    ("What did the cat do after the door opened?", "it ran outside", "it ran outside", 10),
    ("What did the cat do after the door opened?", "it ran outside", "it fell asleep", 0),
    ("Why did the man pick up the umbrella?", "because it started to rain", "because it started to rain", 10),
    ("Why did the man pick up the umbrella?", "because it started to rain", "to hit the dog", 0),
]


def samples() -> list[RewardInput]:
    return [
        RewardInput(f"s{i}", answer, reference, question=question)
        for i, (question, reference, answer, _) in enumerate(CASES)
    ]


def teach_grading(out_dir) -> float:
    """Fit a tiny model to reply 'Score: N' to the judge's own prompts; save it for the server."""
    texts = [SYSTEM_PROMPT] + [" ".join(map(str, c)) for c in CASES] + ["Score: 10", "Score: 0"]
    model, tokenizer = load_model(ModelConfig(dtype="float32"), tokenizer_texts=texts * 4, seed=0)
    loss = teach(model, tokenizer, [(judge_messages(s), f"Score: {grade}") for s, (*_, grade) in zip(samples(), CASES)])
    save_pretrained(model, tokenizer, out_dir)
    return loss


def test_judge_reward_scores_answers_with_a_served_model(tmp_path, monkeypatch):
    assert teach_grading(tmp_path / "judge") < 0.05
    monkeypatch.setenv("LONGRL_TEST_SERVE_KEY", "sk-judge-key")
    thread, *_ = serve_tiny(tmp_path / "judge", api_key_env="LONGRL_TEST_SERVE_KEY")
    with thread:
        reward = build_reward(
            RewardConfig(
                functions=["judge"],
                judge_base_url=thread.url,
                judge_model="tiny",
                judge_api_key_env="LONGRL_TEST_SERVE_KEY",
                judge_max_concurrency=4,
            )
        )
        results = reward(samples())
    assert [r.error for r in results] == [None] * len(CASES)
    assert [r.score for r in results] == [grade / 10 for *_, grade in CASES]
