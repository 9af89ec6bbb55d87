"""The end-to-end pipeline on the offline default: data -> SFT -> RL -> eval."""

import json

import pytest
import torch

from longrl.config import load_config
from longrl.data.dataset import ExampleSet
from longrl.data.prompt import corpus_texts
from longrl.data.rows import load_rows
from longrl.data.synth import SynthConfig, generate_synth
from longrl.data.video import VideoError
from longrl.models.adapter import load_model
from longrl.train.rl import train_rl
from longrl.train.sft import sft_batch, sft_loss

QS = "src/longrl/configs/quickstart.yaml"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    train, test = generate_synth(SynthConfig(str(out), num_train=16, num_test=8, frames=16, options="fixed", workers=1))
    return load_rows(train), load_rows(test)


def tiny(rows, overrides=()):
    cfg = load_config(QS, ["trainer.progress=false", *overrides])
    torch.manual_seed(0)
    model, tokenizer = load_model(cfg.model, tokenizer_texts=corpus_texts(rows))
    return cfg, model, tokenizer


def test_sft_step_lowers_the_loss(synth):
    rows, _ = synth
    cfg, model, tokenizer = tiny(rows)
    examples = ExampleSet(rows[:8], cfg.data).valid()
    batch = sft_batch(model, tokenizer, examples)
    # Only target tokens count: prompt positions are masked out of the loss.
    assert 0 < batch["loss_mask"].sum() < batch["attention_mask"].sum()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss, _ = sft_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_corrupt_video_is_counted_and_skipped(synth, tmp_path):
    rows, _ = synth
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    broken = [rows[0].__class__(**{**rows[0].to_dict(), "id": "bad-1", "video": str(bad)}), *rows[1:4]]
    cfg = load_config(QS, [])
    data = ExampleSet(broken, cfg.data)
    assert data.skipped == ["bad-1"] and [e.row.id for e in data.valid()] == [r.id for r in rows[1:4]]
    strict = load_config(QS, ["data.bad_sample=error"])
    with pytest.raises(VideoError, match="broken.mp4"):
        ExampleSet(broken, strict.data)


def test_rl_raises_a_learnable_reward(synth, tmp_path):
    """GRPO on a reward the policy can reach: a response that starts with a lower-case letter."""
    rows, _ = synth
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text(
        "def lower_first(sample):\n    text = sample.response.lstrip()\n    return 1.0 if text[:1].islower() else 0.0\n"
    )
    cfg, model, tokenizer = tiny(
        rows,
        [
            f"reward.functions=['{reward_file}:lower_first']",
            "rl.steps=8",
            "rl.prompts_per_step=4",
            "rollout.n=8",
            "rollout.max_new_tokens=4",
            "rl.optim.lr=0.02",
            "algorithm.kl_coef=0",
            "trainer.log_every=100",
        ],
    )
    model.model.visual.requires_grad_(False)
    data = ExampleSet(rows[:8], cfg.data)
    train_rl(model, tokenizer, data, cfg, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [line["reward/mean"] for line in lines]
    assert len(rewards) == 8
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards
    assert (tmp_path / "run" / "checkpoints" / "step_8").is_dir()


def test_quickstart_writes_its_report(tmp_path):
    from longrl.quickstart import QuickstartData, quickstart

    overrides = [
        "sft.epochs=1",
        "rl.steps=3",
        "rl.prompts_per_step=2",
        "rollout.n=2",
        "rollout.max_new_tokens=8",
        "eval.max_new_tokens=8",
        "trainer.progress=false",
    ]
    data = QuickstartData(num_train=8, sft_rows=4, num_test=4, frames=16)
    report = quickstart(tmp_path / "qs", "grpo", overrides, data)
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["sft_accuracy"] == report["sft_accuracy"]
    for key in ("chance_accuracy", "sft_accuracy", "rl_accuracy"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["chance_accuracy"] == 0.25 and saved["minutes"] > 0
    assert (saved["sft_rows"], saved["rl_rows"]) == (4, 8)  # SFT on the head of the RL pool
    assert set(saved["rl"]["per_category"]) <= {"Temporal", "Spatial", "Plot & Narrative", "Goal & Purpose"}
    assert (tmp_path / "qs" / "eval_rl" / "report.md").read_text().startswith("| category |")
    assert (tmp_path / "qs" / "rl_model" / "model.safetensors").exists()
    assert saved["seed"] == 0 and set(saved["blind"]) == {"majority_accuracy", "other_video_accuracy"}
    assert 0.0 <= saved["blind"]["majority_accuracy"] <= 1.0 and 0.0 <= saved["blind"]["other_video_accuracy"] <= 1.0
    assert saved["rl_train_accuracy_trend"]["points"] == 3  # one sampled accuracy per RL step

    # A rerun with other settings would resume this run's checkpoints as its own: refused, nothing touched.
    before = {p: p.read_bytes() for p in (tmp_path / "qs").rglob("*") if p.is_file()}
    with pytest.raises(
        FileExistsError, match=r"qs holds a quickstart run with other settings \(trainer.seed: 0 -> 1\)"
    ):
        quickstart(tmp_path / "qs", "grpo", [*overrides, "trainer.seed=1"], data)
    assert {p: p.read_bytes() for p in (tmp_path / "qs").rglob("*") if p.is_file()} == before


def test_mini_batches_never_exceed_the_configured_count():
    from longrl.train.rl import mini_batches

    assert mini_batches(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # 8 // 3 = 2 would make 4 updates
    assert mini_batches(8, 1) == [list(range(8))]
    assert mini_batches(2, 4) == [[0], [1]]


@pytest.mark.parametrize("preset", ["grpo", "dapo", "drgrpo", "rloo", "reinforce_pp", "gspo"])
def test_every_preset_updates_on_ragged_groups(synth, preset):
    """One update per preset over groups of different response lengths, split into mini-batches
    whose padded lengths differ from the step's (REINFORCE++'s token-level advantages once failed here)."""
    from longrl.data.prompt import encode_prompts
    from longrl.infra.guard import NonFiniteGuard
    from longrl.train.optim import build_optimizer, build_scheduler
    from longrl.train.rl import Group, group_logprobs, policy_update, reference_logprobs, step_advantages

    rows, _ = synth
    cfg, model, tokenizer = tiny(rows, [f"algorithm.name={preset}", "algorithm.mini_batches=2"])
    examples = ExampleSet(rows[:2], cfg.data).valid()
    prompts = encode_prompts(model, tokenizer, examples)
    gen = torch.Generator().manual_seed(0)
    groups = []
    for prompt, example, lengths in zip(prompts, examples, ([3, 9, 5, 2], [4, 4, 6, 3])):
        responses = [torch.randint(0, 200, (n,), generator=gen) for n in lengths]
        with torch.no_grad():
            old = group_logprobs(model, prompt, responses).logprobs
        groups.append(
            Group(
                prompt,
                example,
                responses,
                old,
                [True] * 4,
                rewards=torch.tensor([1.0, 0.0, 0.9, 0.1]),
                components=[{}] * 4,
            )
        )
    if cfg.algorithm.kl_coef > 0:
        reference_logprobs(model, groups, cfg)
    advantages, _ = step_advantages(groups, cfg)
    optimizer = build_optimizer(model, cfg.rl.optim)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = policy_update(
        model,
        optimizer,
        build_scheduler(optimizer, cfg.rl.optim, 4),
        groups,
        advantages,
        cfg,
        NonFiniteGuard(3),
        step=1,
    )
    assert all(v == v for v in metrics.values())  # no NaN
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_math_quickstart_writes_its_report(tmp_path):
    """`longrl quickstart --task math`: the arithmetic task, a tiny Qwen2 text model, the math reward."""
    from longrl.quickstart import QuickstartData, quickstart, sweep_table

    overrides = ["sft.epochs=1", "rl.steps=3", "rl.prompts_per_step=2", "rollout.n=2", "trainer.progress=false"]
    data = QuickstartData(task="math", num_train=8, sft_rows=4, num_test=4)
    report = quickstart(tmp_path / "qs", "grpo", overrides, data)
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["task"] == "math" and saved["chance_accuracy"] == 0.0  # free-text answers
    assert saved["blind"]["other_video_accuracy"] is None and 0.0 <= saved["blind"]["majority_accuracy"] <= 1.0
    assert set(saved["rl"]["per_category"]) <= {"Addition", "Subtraction", "Multiplication", "Word problem"}
    config = json.loads((tmp_path / "qs" / "rl_model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # the text class, no vision tower
    assert saved["rl_train_accuracy_trend"]["points"] == 3  # reward/math/accuracy, once per RL step
    table = sweep_table([report])
    assert "| n/a |" in table  # no other-video baseline for text
    assert "SFT>=chance+0.10" not in table and ("RL>=SFT+0.05" in table or "all met" in table)  # math's thresholds


def test_omni_quickstart_reports_the_questions_that_need_the_sound(tmp_path):
    """`longrl quickstart --task omni`: videos with a sound track, a tiny Qwen2.5-Omni thinker, and
    the accuracy on the sound questions equal to those categories' counts in the eval report."""
    from longrl.quickstart import QuickstartData, quickstart, sweep_table

    overrides = ["sft.epochs=1", "rl.steps=3", "rl.prompts_per_step=2", "rollout.n=2", "trainer.progress=false"]
    overrides += ["rollout.max_new_tokens=8", "eval.max_new_tokens=8"]
    data = QuickstartData.for_task("omni", num_train=8, sft_rows=4, num_test=8)
    assert data.audio and data.fps == 8.0
    report = quickstart(tmp_path / "qs", "grpo", overrides, data)
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["task"] == "omni" and saved["chance_accuracy"] == 0.25
    cats = saved["rl"]["per_category"]
    assert set(cats) == {"Temporal", "Spatial", "Sound", "Sound & Sight"} and all(
        c["count"] == 2 for c in cats.values()
    )
    sound = (cats["Sound"]["accuracy"] + cats["Sound & Sight"]["accuracy"]) / 2
    assert saved["rl_audio_accuracy"] == pytest.approx(sound)
    config = json.loads((tmp_path / "qs" / "rl_model" / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni_thinker"
    table = sweep_table([report])
    assert " -> " in table and ("sound: RL>=SFT+0.03" in table or "all met" in table)


def test_rl_group_attention_key_and_entropy_only_when_used(synth, tmp_path, monkeypatch):
    """`rl.group_attention` is the attention every group forward of the RL step runs, and the
    entropy is computed only when the loss reads it (algorithm.entropy_coef > 0)."""
    import longrl.train.group_forward as gf
    import longrl.train.logprobs as lp

    rows, _ = synth
    seen: dict[str, set] = {"backend": set(), "entropy": set()}
    attend, token_logprobs = gf.GroupAttention.attend, lp.token_logprobs

    def recording_attend(self, *args, **kwargs):
        seen["backend"].add(self.backend)
        return attend(self, *args, **kwargs)

    def recording_logprobs(*args, **kwargs):
        seen["entropy"].add(kwargs["with_entropy"])
        return token_logprobs(*args, **kwargs)

    monkeypatch.setattr(gf.GroupAttention, "attend", recording_attend)
    monkeypatch.setattr(lp, "token_logprobs", recording_logprobs)
    quick = ["rl.steps=1", "rl.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=4"]
    for coef, want in (("0", {False}), ("0.01", {True, False})):  # the reference pass never needs it
        seen["backend"].clear(), seen["entropy"].clear()
        cfg, model, tokenizer = tiny(rows, [*quick, "rl.group_attention=split", f"algorithm.entropy_coef={coef}"])
        train_rl(model, tokenizer, ExampleSet(rows[:4], cfg.data), cfg, tmp_path / f"run{coef}", progress=False)
        assert seen["backend"] == {"split"} and seen["entropy"] == want, seen
    with pytest.raises(Exception, match="rl.group_attention"):
        load_config(QS, ["rl.group_attention=flex"])
