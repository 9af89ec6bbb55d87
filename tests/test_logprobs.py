"""Chunked fp32 response log-probs: exact values, chunk-size independence, no [tokens, vocab] kept."""

from __future__ import annotations

import math

import pytest
import torch

from longrl.train.logprobs import _chunk_logprobs, token_logprobs


def test_hand_computed_logprob_and_entropy():
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    hidden = torch.tensor([[2.0, 0.0]])  # logits [2, 0, 0]
    logp, ent = token_logprobs(head, hidden, torch.tensor([0]), with_entropy=True)
    z = math.exp(2) + 2
    assert logp.item() == pytest.approx(2 - math.log(z), abs=1e-6)
    p = [math.exp(2) / z, 1 / z, 1 / z]
    assert ent.item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-6)
    # temperature 2 halves the logits: [1, 0, 0]
    logp_t, _ = token_logprobs(head, hidden, torch.tensor([1]), temperature=2.0)
    assert logp_t.item() == pytest.approx(-math.log(math.e + 2), abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_full_log_softmax_values_and_grads(chunk):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=g)
    weights = torch.randn(37, generator=g)

    logp, ent = token_logprobs(head, hidden, targets, temperature=0.8, with_entropy=True, chunk_tokens=chunk)
    ((weights * logp).sum() + ent.sum()).backward()
    got = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = None
    head.zero_grad()

    logits = head(hidden).double() / 0.8
    full = torch.log_softmax(logits, -1)
    ref_logp = full.gather(-1, targets[:, None]).squeeze(-1)
    ref_ent = -(full.exp() * full).sum(-1)
    ((weights * ref_logp).sum() + ref_ent.sum()).float().backward()
    assert logp.dtype == torch.float32
    assert (logp - ref_logp).abs().max() < 1e-5 and (ent - ref_ent).abs().max() < 1e-5
    for a, b in zip(got, (hidden.grad, head.weight.grad, head.bias.grad)):
        assert (a - b).abs().max() < 1e-5


def _largest_saved(fn) -> int:
    """Largest number of elements of any tensor autograd keeps for the backward of ``fn()``."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return max(sizes)


def test_autograd_keeps_no_tokens_by_vocab_tensor():
    tokens, hidden_size, vocab = 512, 8, 1000
    head = torch.nn.Linear(hidden_size, vocab)
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    chunked = _largest_saved(lambda: token_logprobs(head, hidden, targets, chunk_tokens=64)[0])
    assert chunked < tokens * vocab / 4  # at most the hidden states / a chunk, never all logits
    # the same computation without chunked checkpointing does keep [tokens, vocab]: the probe works
    plain = _largest_saved(lambda: _chunk_logprobs(hidden, targets, head.weight, head.bias, 1.0, False)[0])
    assert plain >= tokens * vocab


def test_no_grad_path_and_bad_chunk():
    head = torch.nn.Linear(4, 9)
    hidden, targets = torch.randn(5, 4), torch.randint(0, 9, (5,))
    with torch.no_grad():
        logp, ent = token_logprobs(head, hidden, targets, chunk_tokens=2)
    assert logp.shape == (5,) and ent is None and not logp.requires_grad
    assert torch.allclose(logp.exp().sum(), torch.softmax(head(hidden), -1).gather(-1, targets[:, None]).sum())
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_logprobs(head, hidden, targets, chunk_tokens=0)
