from longrl.models.tokenizer import CHAT_TEMPLATE, train_tokenizer
from longrl.rewards.multiple_choice import parse_response


def test_tags_are_single_tokens_that_survive_decoding():
    tok = train_tokenizer(["red enters top-left at 0.5s.", "Which object appeared first?"] * 4, vocab_size=300)
    text = "<think>red enters top-left.</think><answer>B</answer>"
    ids = tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:1] == ["<think>"] and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded == text  # the end token goes, the format tags stay
    assert parse_response(decoded).format_ok
    assert tok.encode("any ünïcode text 🙂") and tok.chat_template == CHAT_TEMPLATE
