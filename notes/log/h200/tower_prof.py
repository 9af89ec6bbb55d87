import torch
from torch.profiler import profile, ProfilerActivity
from longrl.bench.common import qwen25vl_3b_config, random_model
from longrl.bench.step import pixel_prompt
from longrl.models.qwen2_5_vl import encode_video
model = random_model(qwen25vl_3b_config(), device="cuda", dtype=torch.bfloat16)
vision = pixel_prompt(model, 512, 128, seed=0).vision
with torch.no_grad():
    encode_video(model, vision); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        encode_video(model, vision); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
