"""Make tests/fixtures/qwen_vision.{npz,json} with transformers' OFFICIAL Qwen2-VL processors.

The fixtures pin longrl.data.vision_preprocess and longrl.data.video.sample_frame_indices to the
official Qwen2VLVideoProcessor / Qwen2VLImageProcessor (which Qwen2.5-VL uses). Those need
torchvision, so run this where torchvision imports (it does not beside the CPU torch build):

    PYTHONPATH=src python3 scripts/make_vision_fixtures.py --out tests/fixtures

Inputs are seeded random uint8 frames (noise is the harshest case for resampling: every
overshoot of the bicubic kernel gets clipped). After writing, the script runs longrl's own
preprocessing on the same inputs and prints whether it matches exactly. It never imports PyAV.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.video_utils import VideoMetadata

SEED = 0
# name, kind, shape (T,H,W or H,W), min_pixels, max_pixels, why
PIXEL_CASES = [
    ("video_resize", "video", (4, 70, 90), 56 * 56, 28 * 28 * 768, "downsize 70x90 -> 56x84"),
    ("video_odd_upscale", "video", (3, 20, 30), 28 * 28 * 2, 28 * 28 * 768, "min_pixels upscale, 3 frames padded to 4"),
    ("video_max_pixels", "video", (2, 120, 90), 28 * 28, 28 * 28 * 4, "max_pixels downscale -> 56x28"),
    ("video_no_resize", "video", (2, 28, 56), 28 * 28, 28 * 28 * 768, "size already fits: no resampling"),
    ("image_resize", "image", (50, 60), 56 * 56, 28 * 28 * 1280, "50x60 -> 56x56"),
    ("image_max_pixels", "image", (150, 100), 28 * 28, 28 * 28 * 4, "max_pixels downscale -> 56x28"),
]
# Full official path with frame sampling: 12 frames at 5 fps sampled at 2 fps.
SAMPLED_CASE = dict(
    name="video_sampled", shape=(12, 40, 50), video_fps=5.0, fps=2.0, min_pixels=28 * 28, max_pixels=28 * 28 * 4
)
# (total_frames, video_fps, num_frames, fps, max_frames, min_frames)
SAMPLING_CASES = [
    *[(30, 10.0, n, None, 768, 4) for n in (2, 3, 4, 5, 6, 7, 8, 9, 16, 30)],
    *[(1000, 29.97, n, None, 768, 4) for n in (16, 33, 64, 100, 768)],
    (97, 24.0, 10, None, 768, 4),
    (7, 30.0, 6, None, 768, 4),
    (30, 10.0, None, 2.0, 768, 4),
    (30, 10.0, None, 2.0, 4, 4),
    (30, 10.0, None, 0.5, 768, 4),
    (30, 10.0, None, 100.0, 768, 4),
    (108000, 30.0, None, 1.0, 768, 4),
    (108000, 30.0, None, 0.1, 768, 4),
    (1001, 29.97, None, 1.0, 768, 4),
    (1001, 29.97, None, 2.0, 64, 4),
    (17, 24.0, None, 24.0, 768, 4),
    (5, 25.0, None, 2.0, 768, 4),
    (333, 23.976, None, 3.3, 768, 8),
    (250, 25.0, None, 1.0, 768, 16),
    # the official function raises for these; longrl falls back (tests/test_video.py)
    (3, 30.0, 4, None, 768, 4),
    (30, 10.0, 1, None, 768, 4),
    (1, 30.0, None, 1.0, 768, 4),
]


def official_pixels(kind: str, array: np.ndarray, min_pixels: int, max_pixels: int) -> dict:
    common = dict(min_pixels=min_pixels, max_pixels=max_pixels, input_data_format="channels_last", return_tensors="pt")
    if kind == "video":
        # Pixel bounds go in at call time: passing them to __init__ mutates the class default dict.
        out = Qwen2VLVideoProcessor()(videos=array, do_sample_frames=False, cap_pixels_per_frame=False, **common)
        return {"pixel_values": out["pixel_values_videos"], "grid_thw": out["video_grid_thw"]}
    out = Qwen2VLImageProcessor()(images=array, **common)
    return {"pixel_values": out["pixel_values"], "grid_thw": out["image_grid_thw"]}


def official_sampling(total: int, video_fps: float, num_frames, fps, max_frames: int, min_frames: int) -> dict:
    metadata = VideoMetadata(total_num_frames=total, fps=video_fps)
    try:
        indices = Qwen2VLVideoProcessor().sample_frames(
            metadata=metadata,
            temporal_patch_size=2,
            min_frames=min_frames,
            max_frames=max_frames,
            num_frames=num_frames,
            fps=fps,
        )
    except Exception as e:  # the official function rejects some requests; longrl handles them itself
        return {"error": f"{type(e).__name__}: {e}"}
    metadata.frames_indices = indices
    return {"indices": [int(i) for i in indices], "sampled_fps": metadata.sampled_fps}


def official_sampled_video(full: np.ndarray, case: dict) -> dict:
    out = Qwen2VLVideoProcessor()(
        videos=full,
        do_sample_frames=True,
        fps=case["fps"],
        cap_pixels_per_frame=False,
        video_metadata={"total_num_frames": len(full), "fps": case["video_fps"]},
        return_metadata=True,
        min_pixels=case["min_pixels"],
        max_pixels=case["max_pixels"],
        input_data_format="channels_last",
        return_tensors="pt",
    )
    metadata = out["video_metadata"][0]
    # Qwen2_5_VLProcessor._process_videos: second_per_grid_ts = temporal_patch_size / sampled_fps
    second_per_grid = Qwen2VLVideoProcessor.temporal_patch_size / metadata.sampled_fps
    return {
        "pixel_values": out["pixel_values_videos"],
        "grid_thw": out["video_grid_thw"],
        "indices": [int(i) for i in metadata.frames_indices],
        "sampled_fps": metadata.sampled_fps,
        "second_per_grid": second_per_grid,
    }


def load_module(path: Path, name: str):
    # Load by file so package __init__ files (which may need PyAV) stay out of the way.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_longrl(repo: Path, arrays: dict, meta: dict) -> bool:
    vp = load_module(repo / "src/longrl/data/vision_preprocess.py", "_longrl_vision_preprocess")
    video = load_module(repo / "src/longrl/data/video.py", "_longrl_video")
    all_ok = True
    for case in meta["pixel_cases"]:
        name, x = case["name"], arrays[f"{case['name']}__input"]
        if case["kind"] == "video":
            ours = vp.preprocess_video(x, sample_fps=2.0, min_pixels=case["min_pixels"], max_pixels=case["max_pixels"])
        else:
            ours = vp.preprocess_image(x, min_pixels=case["min_pixels"], max_pixels=case["max_pixels"])
        ref = torch.from_numpy(arrays[f"{name}__pixel_values"])
        same_grid = ours.grid_thw.tolist() == arrays[f"{name}__grid_thw"].tolist()
        ok = same_grid and ours.pixel_values.shape == ref.shape and torch.equal(ours.pixel_values, ref)
        diff = (ours.pixel_values - ref).abs().max().item() if ours.pixel_values.shape == ref.shape else float("nan")
        print(f"longrl vs official {name}: grid {ours.grid_thw.tolist()} exact={ok} max_abs_diff={diff:.3g}")
        all_ok &= ok
    c = meta["sampled_case"]
    full = arrays[f"{c['name']}__input"]
    indices = video.sample_frame_indices(len(full), c["video_fps"], fps=c["fps"])
    sample_fps = len(set(indices)) / len(full) * c["video_fps"]
    ours = vp.preprocess_video(
        full[indices], sample_fps=sample_fps, min_pixels=c["min_pixels"], max_pixels=c["max_pixels"]
    )
    ok = indices == c["indices"] and torch.equal(
        ours.pixel_values, torch.from_numpy(arrays[f"{c['name']}__pixel_values"])
    )
    ok &= abs(ours.second_per_grid - c["second_per_grid"]) < 1e-12
    print(f"longrl vs official {c['name']} (sampling + pixels + second_per_grid): exact={ok}")
    all_ok &= ok
    bad = 0
    for s in meta["sampling"]:
        if "indices" not in s:
            continue
        ours_idx = video.sample_frame_indices(
            s["total"],
            s["video_fps"],
            num_frames=s["num_frames"] or 0,
            fps=s["fps"] or 0.0,
            max_frames=s["max_frames"],
            min_frames=s["min_frames"],
        )
        if ours_idx != s["indices"]:
            bad += 1
            print(f"sampling mismatch {s}: ours {ours_idx[:10]}... len {len(ours_idx)}")
    print(f"longrl vs official sample_frames: {bad} mismatches in {len(meta['sampling'])} cases")
    return all_ok and bad == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for qwen_vision.npz and qwen_vision.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torchvision

    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "made_by": "scripts/make_vision_fixtures.py",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "pixel_cases": [],
        "sampling": [],
    }
    for name, kind, shape, min_pixels, max_pixels, why in PIXEL_CASES:
        x = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
        ref = official_pixels(kind, x, min_pixels, max_pixels)
        arrays[f"{name}__input"] = x
        arrays[f"{name}__pixel_values"] = ref["pixel_values"].numpy().astype(np.float32)
        arrays[f"{name}__grid_thw"] = ref["grid_thw"].numpy().astype(np.int64)
        meta["pixel_cases"].append(dict(name=name, kind=kind, min_pixels=min_pixels, max_pixels=max_pixels, why=why))
        print(
            f"official {name}: input {x.shape} -> pixel_values {tuple(ref['pixel_values'].shape)} grid {ref['grid_thw'].tolist()}"
        )

    c = SAMPLED_CASE
    full = rng.integers(0, 256, size=(*c["shape"], 3), dtype=np.uint8)
    ref = official_sampled_video(full, c)  # if this raises, fix the script: no partial fixtures
    arrays[f"{c['name']}__input"] = full
    arrays[f"{c['name']}__pixel_values"] = ref["pixel_values"].numpy().astype(np.float32)
    arrays[f"{c['name']}__grid_thw"] = ref["grid_thw"].numpy().astype(np.int64)
    meta["sampled_case"] = {
        **{k: v for k, v in c.items() if k != "shape"},
        "indices": ref["indices"],
        "sampled_fps": ref["sampled_fps"],
        "second_per_grid": ref["second_per_grid"],
    }
    print(
        f"official {c['name']}: indices {ref['indices']} sampled_fps {ref['sampled_fps']} grid {ref['grid_thw'].tolist()}"
    )

    for total, video_fps, num_frames, fps, max_frames, min_frames in SAMPLING_CASES:
        result = official_sampling(total, video_fps, num_frames, fps, max_frames, min_frames)
        meta["sampling"].append(
            dict(
                total=total,
                video_fps=video_fps,
                num_frames=num_frames,
                fps=fps,
                max_frames=max_frames,
                min_frames=min_frames,
                **result,
            )
        )

    np.savez_compressed(args.out / "qwen_vision.npz", **arrays)
    (args.out / "qwen_vision.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum((args.out / f).stat().st_size for f in ("qwen_vision.npz", "qwen_vision.json"))
    print(f"wrote {args.out}/qwen_vision.{{npz,json}}: {size / 1024:.0f} KiB")

    try:
        ok = check_longrl(Path(__file__).resolve().parents[1], arrays, meta)
        print("LONGRL MATCHES OFFICIAL EXACTLY" if ok else "LONGRL DIFFERS FROM OFFICIAL")
    except Exception:
        traceback.print_exc()
        print("longrl check crashed")


if __name__ == "__main__":
    main()
