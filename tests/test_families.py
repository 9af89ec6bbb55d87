"""Text model families (qwen2, llama) through the same engine, trainer and export as Qwen2.5-VL:
greedy rollout equals transformers ``generate``, rollout log-probs equal a teacher-forced forward,
the group forward equals per-sample passes in loss and gradients, the export loads in plain
transformers with equal logits, real chat templates render prompts and SFT targets, and loading
keeps host memory near the checkpoint's size. Tiny random fp32 models on CPU."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import AddedToken

from longrl.config import OptimConfig, load_config
from longrl.config_utils import ConfigError
from longrl.data.dataset import Example
from longrl.data.prompt import messages_for
from longrl.data.rows import Row
from longrl.infra.checkpoint import Checkpointer
from longrl.infra.export import export_hf
from longrl.models.adapter import (
    build_prompt,
    decoder_forward,
    end_of_turn_id,
    load_model,
    prompt_embeds,
    prompt_token_ids,
    save_pretrained,
)
from longrl.models.config import ModelConfig, TinyModelConfig
from longrl.models.family import family_of
from longrl.rollout import RolloutConfig, SamplingParams, generate
from longrl.train.logprobs import group_logprobs, sequence_logprobs
from longrl.train.optim import build_optimizer, build_scheduler
from longrl.train.sft import sft_batch

FAMILIES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
TEXTS = ["Tom has 3 apples and buys 4 more. <think>3 + 4 = 7</think><answer>7</answer>"] * 8
TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
TOL = 1e-5


@functools.cache
def _tiny(family: str, seed: int = 0):
    cfg = ModelConfig(dtype="float32", tiny=TinyModelConfig(family=family))
    return load_model(cfg, tokenizer_texts=TEXTS, seed=seed)


def tiny(family: str, seed: int = 0):
    """A fresh copy (tests change grads and flags) of the tiny model of ``family`` and its tokenizer."""
    model, tok = _tiny(family, seed)
    return copy.deepcopy(model).eval(), tok


def text_prompts(model, tok):
    questions = ["Tom has 3 apples and buys 4 more. How many now?", "What is 12 - 5?"]
    return [
        build_prompt(model, tok, [{"role": "system", "content": "Think."}, {"role": "user", "content": q}], None)
        for q in questions
    ]


def test_family_comes_from_model_type_and_unknown_types_fail(tmp_path):
    for family, cls in FAMILIES.items():
        model, tok = tiny(family)
        assert type(model).__name__ == cls and family_of(model).name == family
        assert not hasattr(model.model, "visual")
        save_pretrained(model, tok, tmp_path / family)
        with safe_open(str(tmp_path / family / "model.safetensors"), "pt") as f:
            saved = set(f.keys())
        assert saved == {k for k in model.state_dict() if not (family == "llama" and k == "lm_head.weight")}
        loaded, loaded_tok = load_model(ModelConfig(path=str(tmp_path / family), dtype="float32"))
        assert type(loaded).__name__ == cls
        text = "<|im_start|>user\nWhat is 15 + 27 - 3?<|im_end|>\n<think>15 + 27 = 42. 42 - 3 = 39.</think>"
        assert loaded_tok(text)["input_ids"] == tok(text)["input_ids"]  # the reloaded tokenizer splits alike
        ids = torch.tensor([[5, 9, 17, 3]])
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    llama, _ = tiny("llama")
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()  # tied, as Llama 3.2
    qwen2, _ = tiny("qwen2")
    assert (
        qwen2.model.layers[0].self_attn.q_proj.bias is not None and llama.model.layers[0].self_attn.q_proj.bias is None
    )

    config = json.loads((tmp_path / "qwen2" / "config.json").read_text())
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(
        ConfigError,
        match=r"model_type.*'gpt2' is not supported; longrl supports llama, qwen2, qwen2_5_omni, qwen2_5_omni_thinker, qwen2_5_vl",
    ):
        load_model(ModelConfig(path=str(tmp_path / "gpt2")))
    with pytest.raises(ConfigError, match="model.tiny.family"):
        load_config(None, ["model.tiny.family=gpt2"])


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_rollout_equals_transformers_generate(family):
    model, tok = tiny(family)
    prompts = text_prompts(model, tok)
    out = generate(
        model,
        prompts,
        SamplingParams(n=2, greedy=True, max_new_tokens=16),
        config=RolloutConfig(prefill_chunk_tokens=7),
    )
    for prompt, group in zip(prompts, out):
        ids = prompt.input_ids[None]
        ref = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=16,
            min_new_tokens=16,
        )[0, ids.shape[1] :].tolist()
        assert [s.token_ids for s in group] == [ref, ref]


def teacher_forced_logprobs(model, prompt, tokens: list[int], temperature: float) -> torch.Tensor:
    response = torch.tensor(tokens)
    embeds = torch.cat([prompt_embeds(model, prompt), model.get_input_embeddings()(response)])
    positions = torch.cat([prompt.position_ids, prompt.response_positions(len(tokens))], dim=1)
    with torch.no_grad():
        hidden = decoder_forward(model, embeds[None], positions[:, None])  # transformers' own layers
        logits = model.lm_head(hidden[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)]).float()
    return (logits / temperature).log_softmax(-1).gather(-1, response[:, None])[:, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_logprobs_equal_teacher_forced_forward(family):
    model, tok = tiny(family)
    prompts = text_prompts(model, tok)
    params = SamplingParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=12, seed=5)
    out = generate(model, prompts, params)
    for prompt, group in zip(prompts, out):
        assert len({tuple(s.token_ids) for s in group}) > 1  # sampled, not one repeated sequence
        for s in group:
            ref = teacher_forced_logprobs(model, prompt, s.token_ids, 0.8)
            assert (torch.tensor(s.logprobs) - ref).abs().max().item() < 1e-4


def _grads(model) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_group_forward_equals_per_sample(family):
    model, tok = tiny(family)
    model.train()
    prompt = text_prompts(model, tok)[0]
    g = torch.Generator().manual_seed(1)
    responses = [torch.randint(0, len(tok), (n,), generator=g) for n in (6, 11, 1, 8)]
    weights = [torch.randn(len(r), generator=g) for r in responses]

    group = group_logprobs(model, prompt, responses)
    assert group.info["layers"] == "eager"  # longrl's layer functions, not transformers' layers
    group_loss = sum((w * lp).sum() for w, lp in zip(weights, group.logprobs))
    group_loss.backward()
    group_grads = _grads(model)

    separate = [sequence_logprobs(model, prompt, r) for r in responses]  # transformers' layers, one per sample
    separate_loss = sum((w * lp).sum() for w, lp in zip(weights, separate))
    separate_loss.backward()
    separate_grads = _grads(model)

    for a, b in zip(group.logprobs, separate):
        assert (a - b).abs().max().item() <= TOL
    assert abs(group_loss.item() - separate_loss.item()) <= TOL
    assert group_grads.keys() == separate_grads.keys() and "model.embed_tokens.weight" in group_grads
    worst = max((group_grads[k] - separate_grads[k]).abs().max().item() for k in group_grads)
    assert worst <= TOL, f"max grad difference {worst:.3g}"


LOAD_WITHOUT_LONGRL = textwrap.dedent("""
    import json, sys
    sys.modules["longrl"] = None
    import torch
    from transformers import AutoModelForCausalLM
    export, ids = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    print(json.dumps({"class": type(model).__name__, "logits": logits.tolist()}))
""")


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_plain_transformers_with_equal_logits(family, tmp_path):
    model, tok = tiny(family)
    model.train()
    cfg = OptimConfig(lr=1e-2, warmup_steps=0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, 10)
    prompt = text_prompts(model, tok)[0]
    sequence_logprobs(model, prompt, torch.tensor([5, 6, 7])).sum().backward()
    optimizer.step()  # trained weights, so the export is not the initialisation
    Checkpointer(tmp_path / "run", tokenizer=tok, processor=None).save(
        1, model=model, optimizer=optimizer, scheduler=scheduler, extra={}
    )
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [FAMILIES[family]]
    assert not (out / "preprocessor_config.json").exists()  # a text model has no processor
    ids = prompt.input_ids.tolist()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_LONGRL, str(out), json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["class"] == FAMILIES[family]
    with torch.no_grad():
        ref = model.eval()(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.tensor(got["logits"]), ref, rtol=0, atol=1e-5)


def checkpoint_tokenizer(template: str):
    """The tiny tokenizer with a real checkpoint's chat template and its special tokens."""
    _, tok = _tiny("llama" if template.startswith("llama") else "qwen2")
    tok = copy.deepcopy(tok)
    tok.chat_template = (TEMPLATES / template).read_text()
    if template.startswith("llama"):
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in specials]})
        tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    return tok


@pytest.mark.parametrize(
    "template,generation_header,end",
    [
        ("qwen2_5_instruct.jinja", "<|im_start|>assistant\n", "<|im_end|>"),
        ("llama3_2_instruct.jinja", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ],
)
def test_checkpoint_chat_templates_render_prompts_and_sft_targets(template, generation_header, end):
    tok = checkpoint_tokenizer(template)
    model, _ = tiny("llama" if template.startswith("llama") else "qwen2")
    row = Row(id="m1", video=None, question="What is 12 - 5?", options=[], answer="7", reasoning="12 - 5 = 7")
    ids = prompt_token_ids(model, tok, messages_for(row), None)
    text = tok.decode(ids)
    assert text.endswith(generation_header)
    assert "What is 12 - 5?" in text and "final answer inside <answer>" in text  # system and question, as strings
    assert "'type'" not in text  # string content, not a list of parts printed by a text-only template
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids(end)

    batch = sft_batch(model, tok, [Example(row=row, vision=None, video_embeds=None)])
    seq, mask = batch["input_ids"][0], batch["loss_mask"][0]
    assert torch.equal(seq[: len(ids)], ids) and not mask[: len(ids)].any()
    target = tok.decode(seq[mask])
    assert target == f"<think>12 - 5 = 7</think><answer>7</answer>{end}"


LOAD_MEMORY = textwrap.dedent("""
    import json, sys
    from longrl.models.adapter import load_model
    from longrl.models.config import ModelConfig
    def status_mb(key):
        line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
        return int(line.split()[1]) / 1024
    small, big = sys.argv[1], sys.argv[2]
    load_model(ModelConfig(path=small, dtype="float32"))  # imports, caches, allocator warm
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = status_mb("VmRSS")
    model, _ = load_model(ModelConfig(path=big, dtype="float32"))
    total = sum(float(p.double().sum()) for p in model.parameters())  # touch every weight: all resident now
    print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM"), "after_mb": status_mb("VmRSS")}))
""")


def test_loading_a_checkpoint_keeps_host_memory_near_its_size(tmp_path):
    """Peak resident memory while loading grows by about one copy of the weights, not several: in
    a fresh process that loaded a tiny checkpoint first (every import warm), the peak (VmHWM, reset
    just before) against the resident memory before the load."""
    for name, shape in (
        ("small", TinyModelConfig(family="qwen2")),
        ("big", TinyModelConfig(family="qwen2", hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8)),
    ):
        model, tok = load_model(ModelConfig(dtype="float32", tiny=shape), tokenizer_texts=TEXTS)
        save_pretrained(model, tok, tmp_path / name)
    size_mb = (tmp_path / "big" / "model.safetensors").stat().st_size / 2**20
    assert size_mb > 40
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_MEMORY, str(tmp_path / "small"), str(tmp_path / "big")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = m["peak_mb"] - m["before_mb"]
    assert m["after_mb"] - m["before_mb"] > 0.8 * size_mb  # the weights are resident: the measure sees them
    print(f"size {size_mb:.1f} MB, peak growth {growth:.1f} MB")
    assert growth < 1.6 * size_mb, f"loading a {size_mb:.0f} MB checkpoint raised peak RSS by {growth:.0f} MB ({m})"


@pytest.fixture(scope="module")
def math_rows(tmp_path_factory):
    from longrl.data.arithmetic import ArithmeticConfig, generate_arithmetic
    from longrl.data.rows import load_rows

    train, _ = generate_arithmetic(ArithmeticConfig(str(tmp_path_factory.mktemp("math")), num_train=16, num_test=4))
    return load_rows(train)


def _text_rl(family: str, rows, overrides: list[str]):
    from longrl.data.prompt import corpus_texts

    cfg = load_config(
        Path(__file__).parents[1] / "src/longrl/configs/quickstart_math.yaml",
        ["trainer.progress=false", f"model.tiny.family={family}", *overrides],
    )
    model, tok = load_model(cfg.model, tokenizer_texts=corpus_texts(rows), seed=0)
    return cfg, model, tok


@pytest.mark.parametrize("family", FAMILIES)
def test_grpo_raises_a_learnable_reward_on_a_text_model(family, math_rows, tmp_path):
    """train_rl end to end on math rows (no media): a reward the policy can reach (the response
    starts with a digit) rises, and the run checkpoints."""
    from longrl.data.dataset import ExampleSet
    from longrl.train.rl import train_rl

    reward_file = tmp_path / "digit.py"
    reward_file.write_text(
        "def digit_first(sample):\n    return 1.0 if sample.response.lstrip()[:1].isdigit() else 0.0\n"
    )
    cfg, model, tok = _text_rl(
        family,
        math_rows,
        [
            f"reward.functions=['{reward_file}:digit_first']",
            "rl.steps=8",
            "rl.prompts_per_step=4",
            "rollout.n=8",
            "rollout.max_new_tokens=4",
            "rl.optim.lr=0.02",
            "algorithm.kl_coef=0",
            "trainer.log_every=100",
        ],
    )
    train_rl(model, tok, ExampleSet(math_rows[:8], cfg.data), cfg, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [line["reward/mean"] for line in lines]
    assert len(rewards) == 8 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards
    assert (tmp_path / "run" / "checkpoints" / "step_8").is_dir()


def test_every_preset_updates_a_text_model(math_rows, tmp_path):
    """Two RL steps of every preset on a tiny Llama (tied embeddings): finite metrics, and the
    weights move (a reward that varies between samples, so every estimator has a signal)."""
    from longrl.data.dataset import ExampleSet
    from longrl.train.rl import train_rl

    reward_file = tmp_path / "length.py"
    reward_file.write_text("def length(sample):\n    return len(sample.response) / 40\n")
    for preset in ("grpo", "dapo", "drgrpo", "rloo", "reinforce_pp", "gspo"):
        overrides = [f"algorithm.name={preset}", f"reward.functions=['{reward_file}:length']", "rl.steps=2"]
        overrides += ["rl.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=6"]
        cfg, model, tok = _text_rl("llama", math_rows, overrides)
        before = [p.detach().clone() for p in model.parameters()]
        train_rl(model, tok, ExampleSet(math_rows[:4], cfg.data), cfg, tmp_path / preset, progress=False)
        lines = [json.loads(line) for line in (tmp_path / preset / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(v == v for v in lines[-1].values() if isinstance(v, float)), preset
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), preset


def test_broken_or_unsupported_checkpoints_fail_in_one_line(tmp_path):
    """A config.json that is not JSON, one without model_type, and a layer option the decoder does
    not implement each stop with a ConfigError naming the problem, before any weight is used."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not a JSON object .*broken"):
        load_model(ModelConfig(path=str(tmp_path / "broken")))
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(
        ConfigError,
        match="has no model_type; longrl supports llama, qwen2, qwen2_5_omni, qwen2_5_omni_thinker, qwen2_5_vl",
    ):
        load_model(ModelConfig(path=str(tmp_path / "untyped")))

    model, tok = tiny("qwen2")
    model.config.hidden_act = "gelu"  # not the SwiGLU longrl's decoder layer implements
    with pytest.raises(ConfigError, match="this qwen2 checkpoint uses hidden_act 'gelu'"):
        generate(model, text_prompts(model, tok), SamplingParams(n=1, greedy=True, max_new_tokens=2))
