"""export_hf: a plain transformers install (no longrl) loads the export and gives the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from _checkpoint_tiny import optimizer_and_scheduler, tiny, train_step
from longrl.infra.checkpoint import Checkpointer, CheckpointError
from longrl.infra.export import export_hf
from longrl.infra.hf_files import ProcessorSpec

# Runs in a fresh interpreter where importing longrl fails, as on a machine without it.
LOAD_WITHOUT_LONGRL = textwrap.dedent("""
    import json, sys
    sys.modules["longrl"] = None
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    export, io = sys.argv[1], sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(export).eval()
    inputs = load_file(io + "/inputs.safetensors")
    inputs["second_per_grid_ts"] = inputs["second_per_grid_ts"].float()
    with torch.no_grad():
        text = model(input_ids=inputs["text_ids"]).logits
        video = model(input_ids=inputs["video_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                      pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                      second_per_grid_ts=inputs["second_per_grid_ts"], position_ids=inputs["position_ids"]).logits
    save_file({"text": text.contiguous(), "video": video.contiguous()}, io + "/logits.safetensors")
    tok = AutoTokenizer.from_pretrained(export)
    chat = tok.apply_chat_template([{"role": "user", "content": "red enters"}], tokenize=False,
                                   add_generation_prompt=True)
    json.dump({"ids": tok("blue moves right")["input_ids"], "chat": chat,
               "attn": model.config.text_config._attn_implementation, "class": type(model).__name__},
              open(io + "/out.json", "w"))
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model after two updates, checkpointed with its tokenizer and processor spec."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    model, tok = tiny()
    opt, sched = optimizer_and_scheduler(model)
    for _ in range(2):
        train_step(model, opt, sched)
    spec = ProcessorSpec.from_model(model, min_pixels=56 * 56, max_pixels=224 * 224)
    Checkpointer(run, tokenizer=tok, processor=spec).save(2, model=model, optimizer=opt, scheduler=sched, extra={})
    (run / "model").mkdir()  # a run dir also holds the final save_pretrained model; export must look past it
    return run, model.eval(), tok, spec


def _inputs(model, tok) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    cfg = model.config
    grid = torch.tensor([[2, 4, 4]])  # 2 temporal patches of 4x4 -> 8 merged video tokens
    video_tokens = int(grid.prod()) // cfg.vision_config.spatial_merge_size**2
    text = tok("what happens first?")["input_ids"]
    video_ids = torch.tensor(
        [[cfg.vision_start_token_id] + [cfg.video_token_id] * video_tokens + [cfg.vision_end_token_id] + text]
    )
    patch_dim = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size**2
    types = (video_ids == cfg.video_token_id).long() * 2
    # longrl's M-RoPE rule (Qwen's reference, longrl.models.rope) places text after a video differently
    # from transformers 5.17's own; positions are inputs, so both sides get the same explicit ones.
    positions, _ = model.model.get_rope_index(
        video_ids, mm_token_type_ids=types, video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0])
    )
    return {
        "position_ids": positions,
        "text_ids": torch.tensor([text]),
        "video_ids": video_ids,
        "mm_token_type_ids": types,
        "pixel_values_videos": torch.randn(int(grid.prod()), patch_dim),
        "video_grid_thw": grid,
        "second_per_grid_ts": torch.tensor([1.0]),
    }


def test_export_loads_without_longrl_with_equal_logits(trained, tmp_path):
    run, model, tok, _ = trained
    out = export_hf(run, tmp_path / "hf")  # the run dir resolves to its newest checkpoint
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert "longrl" not in (out / "config.json").read_text()

    inputs = _inputs(model, tok)
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_LONGRL, str(out), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(str(tmp_path / "logits.safetensors"))
    with torch.no_grad():
        ref_text = model(input_ids=inputs["text_ids"]).logits
        ref_video = model(
            input_ids=inputs["video_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            pixel_values_videos=inputs["pixel_values_videos"],
            video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"],
            position_ids=inputs["position_ids"],
        ).logits
    torch.testing.assert_close(got["text"], ref_text, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["video"], ref_video, rtol=0, atol=1e-5)

    info = json.loads((tmp_path / "out.json").read_text())
    assert info["class"] == "Qwen2_5_VLForConditionalGeneration" and info["attn"] == "sdpa"
    assert info["ids"] == tok("blue moves right")["input_ids"]
    assert info["chat"] == "<|im_start|>user\nred enters<|im_end|>\n<|im_start|>assistant\n"


def test_processor_files_carry_the_run_pixel_bounds(trained, tmp_path):
    run, _, _, spec = trained
    out = export_hf(run / "checkpoints" / "step_2", tmp_path / "hf")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = Qwen2VLImageProcessorPil.from_pretrained(out)  # the torchvision-free variant of the same config
    assert (image.size["shortest_edge"], image.size["longest_edge"]) == (56 * 56, 224 * 224)
    assert (image.patch_size, image.merge_size, image.temporal_patch_size) == (14, 2, 2)
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor" and video["cap_pixels_per_frame"] is False
    assert video["size"] == {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    assert video["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert (out / "chat_template.jinja").read_text().startswith("{% for message in messages %}")


def test_export_casts_dtype_and_refuses_to_overwrite(trained, tmp_path):
    run, model, _, _ = trained
    out = export_hf(run, tmp_path / "hf", dtype="bfloat16")
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ref = model.model.language_model.embed_tokens.weight.detach().to(torch.bfloat16)
    assert torch.equal(weights["model.embed_tokens.weight"], ref)
    with pytest.raises(FileExistsError, match="not empty"):
        export_hf(run, out)
    export_hf(run, out, overwrite=True)
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float32}


def test_export_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_hf(tmp_path / "nope", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export_hf(tmp_path / "empty", tmp_path / "hf")
