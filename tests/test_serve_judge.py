"""The judge reward pointed at ``longrl serve``: a tiny model taught to grade, served over HTTP,
scores open-ended answers through JudgeClient (the same path a training run's reward takes)."""

from __future__ import annotations

import torch

from longrl.models.config import ModelConfig
from longrl.models.qwen2_5_vl import load_model, save_pretrained
from longrl.rewards import RewardConfig, RewardInput, build_reward
from longrl.rewards.judge import SYSTEM_PROMPT, judge_messages
from serve_helpers import serve_tiny

CASES = [  # (question, reference, answer, the grade the judge is taught)
    ("What did the cat do after the door opened?", "it ran outside", "it ran outside", 10),
    ("What did the cat do after the door opened?", "it ran outside", "it fell asleep", 0),
    ("Why did the man pick up the umbrella?", "because it started to rain", "because it started to rain", 10),
    ("Why did the man pick up the umbrella?", "because it started to rain", "to hit the dog", 0),
]


def samples() -> list[RewardInput]:
    return [RewardInput(f"s{i}", answer, reference, question=question)
            for i, (question, reference, answer, _) in enumerate(CASES)]


def teach_grading(out_dir):
    """Fit a tiny model to reply 'Score: N' to the judge's own prompts; save it for the server."""
    texts = [SYSTEM_PROMPT] + [" ".join(map(str, c)) for c in CASES] + ["Score: 10", "Score: 0"]
    model, tokenizer = load_model(ModelConfig(dtype="float32"), tokenizer_texts=texts * 4, seed=0)
    batch = []
    for sample, (*_, grade) in zip(samples(), CASES):
        prompt = tokenizer.apply_chat_template(judge_messages(sample), add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(f"Score: {grade}<|im_end|>", add_special_tokens=False)["input_ids"]
        batch.append((torch.tensor(p_ids + t_ids), torch.tensor([-100] * len(p_ids) + t_ids)))
    width = max(len(ids) for ids, _ in batch)  # right-padded into one batch
    ids = torch.stack([torch.nn.functional.pad(i, (0, width - len(i)), value=tokenizer.pad_token_id) for i, _ in batch])
    labels = torch.stack([torch.nn.functional.pad(lab, (0, width - len(lab)), value=-100) for _, lab in batch])
    mask = torch.stack([torch.arange(width) < len(i) for i, _ in batch]).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_pretrained(model, tokenizer, out_dir)
    return loss.item()


def test_judge_reward_scores_answers_with_a_served_model(tmp_path, monkeypatch):
    assert teach_grading(tmp_path / "judge") < 0.05
    monkeypatch.setenv("LONGRL_TEST_SERVE_KEY", "sk-judge-key")
    thread, *_ = serve_tiny(tmp_path / "judge", api_key_env="LONGRL_TEST_SERVE_KEY")
    with thread:
        reward = build_reward(RewardConfig(functions=["judge"], judge_base_url=thread.url, judge_model="tiny",
                                           judge_api_key_env="LONGRL_TEST_SERVE_KEY", judge_max_concurrency=4))
        results = reward(samples())
    assert [r.error for r in results] == [None] * len(CASES)
    assert [r.score for r in results] == [grade / 10 for *_, grade in CASES]
