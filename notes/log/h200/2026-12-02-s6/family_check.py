"""GPU check of the text families: greedy rollout (CUDA graphs, fused Triton decode, compiled
prefill) equals transformers generate; group forward (compiled layers, hybrid attention) equals
per-sample transformers forwards. Tiny random models, fp32 and bf16."""
import json
import torch
from longrl.models.adapter import build_prompt, load_model
from longrl.models.config import ModelConfig, TinyModelConfig
from longrl.rollout import SamplingParams, generate
from longrl.train.logprobs import group_logprobs, sequence_logprobs

TEXTS = ["Tom has 3 apples and buys 4 more. <think>3 + 4 = 7</think><answer>7</answer>"] * 8
for family in ("qwen2", "llama", "qwen2_5_vl"):
    for dtype in ("float32", "bfloat16"):
        shape = TinyModelConfig(family=family, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2)
        model, tok = load_model(ModelConfig(dtype=dtype, tiny=shape), "cuda", tokenizer_texts=TEXTS, seed=0)
        model.eval()
        qs = ["Tom has 3 apples and buys 4 more. How many now?", "What is 12 - 5?"]
        prompts = [build_prompt(model, tok, [{"role": "user", "content": q}], None) for q in qs]
        out = generate(model, prompts, SamplingParams(n=4, greedy=True, max_new_tokens=32))
        match = []
        for p, group in zip(prompts, out):
            ids = p.input_ids[None]
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=32, min_new_tokens=32)[0, ids.shape[1]:].tolist()
            match.append(sum(a == b for a, b in zip(group[0].token_ids, ref)) / 32)
        info, diff = None, None
        if True:  # short groups take the dense backend now (DENSE_BELOW)
            g = torch.Generator().manual_seed(1)
            responses = [torch.randint(0, len(tok), (n,), generator=g).cuda() for n in (30, 17, 1, 25)]
            model.train()
            grp = group_logprobs(model, prompts[0], responses)
            sep = [sequence_logprobs(model, prompts[0], r) for r in responses]
            diff = max((a - b).abs().max().item() for a, b in zip(grp.logprobs, sep))
            info = grp.info
        print(json.dumps({"family": family, "dtype": dtype, "greedy_match_frac": match, "group_layers": info,
                          "group_vs_hf_max_logprob_diff": diff}), flush=True)
