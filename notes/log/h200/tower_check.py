"""On the GPU: the 3B-shaped vision tower, batched window attention vs transformers' per-window path
(bf16): relative difference of the embeddings, and each path's time at 128 and 512 frames (448x448)."""
import json
import time

import torch

from longrl.bench.common import qwen25vl_3b_config, random_model
from longrl.bench.step import pixel_prompt
from longrl.models.qwen2_5_vl import encode_video

model = random_model(qwen25vl_3b_config(), device="cuda", dtype=torch.bfloat16)
model.model.visual.requires_grad_(False)
for frames in (128, 512):
    vision = pixel_prompt(model, frames, 128, seed=0).vision
    out = {}
    for batched in (True, False):
        with torch.no_grad():
            if batched:  # warm-up (the per-window path's small SDPA calls need none to speak of)
                encode_video(model, vision, batched_attention=batched)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            emb = encode_video(model, vision, batched_attention=batched)
            torch.cuda.synchronize()
        out[batched] = (emb.float(), time.perf_counter() - t0)
    a, b = out[True][0], out[False][0]
    print(json.dumps(dict(frames=frames, patches=int(vision.grid_thw.prod()), batched_s=round(out[True][1], 3),
                          transformers_s=round(out[False][1], 3), tower_speedup=round(out[False][1] / out[True][1], 1),
                          rel_diff=float((a - b).norm() / b.norm()), max_abs_diff=float((a - b).abs().max()))),
          flush=True)
