"""M-RoPE positions follow Qwen2.5-VL's reference rule, in our prompts and in transformers' forward."""

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from longrl.models.rope import reference_positions, use_reference_rope_index


def _config(tokens_per_second: int) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=1,
            out_hidden_size=32,
            tokens_per_second=tokens_per_second,
        ),
        image_token_id=60,
        video_token_id=61,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )


def test_video_positions_match_the_reference_example():
    # The worked example of Qwen2.5-VL's release: 3 temporal patches of 2x2 merged tokens, 1 fps,
    # temporal patch 2 (2 s per grid), 25 tokens per second -> temporal step 50; text after the
    # video starts at the largest position + 1.
    types = [2] * 12 + [0] * 5
    pos = reference_positions(types, _config(25), [], [torch.tensor([3, 4, 4])], [2.0])
    assert pos[0].tolist() == [0, 0, 0, 0, 50, 50, 50, 50, 100, 100, 100, 100, 101, 102, 103, 104, 105]
    assert pos[1].tolist() == [0, 0, 1, 1] * 3 + [101, 102, 103, 104, 105]
    assert pos[2].tolist() == [0, 1, 0, 1] * 3 + [101, 102, 103, 104, 105]


def test_fractional_interval_is_not_truncated():
    # 4 fps sampling with temporal patch 2: 0.5 s per grid, 2 tokens per second -> step 1, not 0
    pos = reference_positions([0, 0] + [2] * 4 + [0], _config(2), [], [torch.tensor([4, 2, 2])], [0.5])
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert pos[1].tolist() == [0, 1, 2, 2, 2, 2, 6]


def test_transformers_forward_uses_the_installed_rule():
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(_config(2)).eval()
    ids = torch.tensor([[1, 2, 62] + [61] * 8 + [63, 3, 4]])  # 4 temporal patches of 1x2 merged tokens
    types = (ids == 61).int() * 2
    grid = torch.tensor([[4, 2, 4]])
    stock, _ = model.model.get_rope_index(
        ids, mm_token_type_ids=types, video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0])
    )
    use_reference_rope_index(model)
    ours, delta = model.model.get_rope_index(
        ids, mm_token_type_ids=types, video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0])
    )
    # video at t = 3 + {0, 2, 4, 6}; the text after it starts at 3 + 6 + 1 = 10 (transformers 5.17: 5)
    assert ours[0, 0].tolist() == [0, 1, 2, 3, 3, 5, 5, 7, 7, 9, 9, 10, 11, 12]
    assert int(stock[0, 0, 11]) != 10  # the departure this module exists for
    assert int(delta) == 13 - 14  # largest position + 1 - length
    # transformers' forward picks the installed rule up: same logits as explicit positions
    video = torch.randn(int(grid.prod()), 3 * 2 * 14 * 14)
    kwargs = dict(
        input_ids=ids,
        mm_token_type_ids=types,
        pixel_values_videos=video,
        video_grid_thw=grid,
        second_per_grid_ts=torch.tensor([1.0]),
    )
    with torch.no_grad():
        implicit = model(**kwargs).logits
        explicit = model(**kwargs, position_ids=ours).logits
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)


def test_padded_batch_rows_get_their_own_video():
    model = Qwen2_5_VLForConditionalGeneration(_config(2)).eval()
    use_reference_rope_index(model)
    row_a = [1, 62] + [61] * 2 + [63, 3]  # grid [2, 2, 2]: 2 temporal patches of one merged token
    row_b = [62] + [61] * 4 + [63, 3, 4]
    ids = torch.full((2, 8), 0)
    ids[0, :6], ids[1, :8] = torch.tensor(row_a), torch.tensor(row_b)
    mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8])
    pos, _ = model.model.get_rope_index(
        ids,
        mm_token_type_ids=(ids == 61).int() * 2,
        video_grid_thw=torch.tensor([[2, 2, 2], [4, 2, 2]]),
        second_per_grid_ts=torch.tensor([1.0, 0.5]),
        attention_mask=mask,
    )
    assert pos[0, 0, :6].tolist() == [0, 1, 2, 4, 5, 6]
    assert pos[0, 1, :8].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
