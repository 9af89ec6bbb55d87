"""Response log-probs without a [tokens, vocab] tensor.

Only the hidden states that predict response tokens go through the LM head, ``chunk_tokens`` at
a time, with an fp32 log-softmax. Under autograd each chunk is checkpointed: the backward pass
recomputes that chunk's logits instead of keeping them, so peak memory is one chunk of
[chunk_tokens, vocab] fp32 whatever the prefix length or the number of responses.

The log-prob of response token t is ``log_softmax(lm_head(h_{t-1}) / temperature)[token_t]``,
where ``h_{t-1}`` is the hidden state before it (the last prefix position for t = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from longrl.dist.parallelize import root_forward
from longrl.dist.ulysses import sequence_parallel
from longrl.models.adapter import decoder_forward, lm_head, prompt_embeds
from longrl.models.inputs import Prompt
from longrl.train.group_forward import Backend, LayerImpl, group_hidden


@dataclass
class GroupLogprobs:
    logprobs: list[torch.Tensor]  # n tensors [R_i], fp32
    entropy: list[torch.Tensor] | None  # n tensors [R_i], fp32, of the temperature-scaled policy
    info: dict = field(default_factory=dict)  # layer implementation, checkpointed layers (group_hidden)


def _chunk_logprobs(hidden, targets, weight, bias, temperature: float, with_entropy: bool):
    logits = F.linear(hidden, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logp, None
    probs = torch.softmax(logits, dim=-1)
    entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


def token_logprobs(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 log-probs [N] (and entropies [N]) of ``targets [N]`` under ``head(hidden [N, H])``."""
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    logps, ents = [], []
    for start in range(0, max(hidden.shape[0], 1), chunk_tokens):  # no rows: one empty chunk (the head is used)
        args = (
            hidden[start : start + chunk_tokens],
            targets[start : start + chunk_tokens],
            head.weight,
            head.bias,
            temperature,
            with_entropy,
        )
        logp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False) if grad else _chunk_logprobs(*args)
        logps.append(logp)
        ents.append(ent)
    logp = torch.cat(logps)
    return logp, (torch.cat(ents) if with_entropy else None)


def group_logprobs(
    model,
    prompt: Prompt,
    responses: list[torch.Tensor],
    *,
    temperature: float = 1.0,
    train_vision: bool = False,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
    backend: Backend = "auto",
    layers: LayerImpl = "auto",
) -> GroupLogprobs:
    """Log-probs of n ragged ``responses`` ([R_i] token ids) after ``prompt``, by one group forward:
    the prefix runs once and the responses are packed after it (see ``group_forward``).
    Differentiable; call under ``torch.no_grad()`` for old-policy / reference log-probs.
    ``backend``: group attention (see ``GroupAttention``); ``layers``: decoder layer implementation
    (see ``group_hidden``; compiled fused layers on CUDA by default)."""
    # entered through the FSDP2 root when the model is sharded (longrl.dist): embeddings and head gathered
    return root_forward(
        model,
        _group_logprobs,
        prompt,
        responses,
        temperature=temperature,
        train_vision=train_vision,
        with_entropy=with_entropy,
        chunk_tokens=chunk_tokens,
        backend=backend,
        layers=layers,
    )


def _group_logprobs(
    model,
    prompt: Prompt,
    responses: list[torch.Tensor],
    *,
    temperature: float,
    train_vision: bool,
    with_entropy: bool,
    chunk_tokens: int,
    backend: Backend,
    layers: LayerImpl,
) -> GroupLogprobs:
    info: dict = {}
    hidden, packing = group_hidden(
        model, prompt, responses, train_vision=train_vision, backend=backend, layers=layers, stats=info
    )
    # under sequence parallelism each rank scores the predictor rows it holds, then all ranks get all
    sp = sequence_parallel(model)
    rows, owned = sp.local_rows(packing.predictor_index(hidden.device), packing.total_len)
    targets = torch.cat([r.to(hidden.device) for r in responses])[owned]
    logp, ent = token_logprobs(
        lm_head(model),
        hidden.index_select(0, rows),
        targets,
        temperature=temperature,
        with_entropy=with_entropy,
        chunk_tokens=chunk_tokens,
    )
    logp, ent = sp.combine(logp, owned), (sp.combine(ent, owned) if ent is not None else None)
    sizes = packing.response_lens
    return GroupLogprobs(list(logp.split(sizes)), list(ent.split(sizes)) if ent is not None else None, info)


@overload
def sequence_logprobs(
    model,
    prompt: Prompt,
    response: torch.Tensor,
    *,
    temperature: float = ...,
    train_vision: bool = ...,
    with_entropy: Literal[False] = ...,
    chunk_tokens: int = ...,
) -> torch.Tensor: ...
@overload
def sequence_logprobs(
    model,
    prompt: Prompt,
    response: torch.Tensor,
    *,
    temperature: float = ...,
    train_vision: bool = ...,
    with_entropy: Literal[True],
    chunk_tokens: int = ...,
) -> tuple[torch.Tensor, torch.Tensor | None]: ...
@overload
def sequence_logprobs(
    model,
    prompt: Prompt,
    response: torch.Tensor,
    *,
    temperature: float = ...,
    train_vision: bool = ...,
    with_entropy: bool,
    chunk_tokens: int = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]: ...
def sequence_logprobs(
    model,
    prompt: Prompt,
    response: torch.Tensor,
    *,
    temperature: float = 1.0,
    train_vision: bool = False,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: log-probs [R] of one ``response`` from the plain causal sequence [prompt | response]
    (the prefix is recomputed for every response). Returns (logp, entropy) when ``with_entropy``."""
    device = prompt.input_ids.device
    response = response.to(device)
    embeds = torch.cat(
        [prompt_embeds(model, prompt, grad_through_vision=train_vision), model.get_input_embeddings()(response)]
    )
    positions = torch.cat([prompt.position_ids, prompt.response_positions(response.numel())], dim=1)
    hidden = decoder_forward(model, embeds[None], positions[:, None])[0]
    P = len(prompt)
    predictors = hidden[P - 1 : P - 1 + response.numel()]
    logp, ent = token_logprobs(
        lm_head(model),
        predictors,
        response,
        temperature=temperature,
        with_entropy=with_entropy,
        chunk_tokens=chunk_tokens,
    )
    return (logp, ent) if with_entropy else logp
