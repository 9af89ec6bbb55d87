"""Ulysses sequence parallelism for the text decoder: tokens sharded, heads sharded around attention.

Outside attention each rank of the sp group holds ``S = ceil(L / sp)`` consecutive tokens of all
heads (the sequence padded at its end to ``sp * S``). Around attention one all-to-all turns
``[L/sp tokens, H heads]`` into ``[L tokens, H/sp heads]`` and one turns it back, so the attention
layout (the group layout of training, the causal prefill) runs unchanged over the whole sequence
for this rank's heads. With fewer KV heads than ranks (Qwen2.5-VL-3B: 2 KV heads, sp = 4) each KV
head is replicated to the ranks whose query heads read it.

Every forward calls the same methods of a :class:`SequenceParallel`; one rank's is the identity,
:class:`Ulysses` implements them with functional collectives (autograd-aware: the backward of an
all-to-all is the inverse all-to-all). ``apply_sequence_parallel`` (``longrl.dist.sequence_parallel``)
puts one on the model; :func:`sequence_parallel` reads it.

Gradient convention: every sp rank computes the same loss from the same combined log-probs, and
the backward of :meth:`Ulysses.combine` scales by ``sp`` so that per-rank parameter gradients
*average* to the full gradient over the sp group. FSDP2 (or an all-reduce mean) over a mesh that
includes the sp dimension is then exact with no special divide factor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

from longrl.models.attention import AttentionLayout

# all-gathers along dim 0 (torch 2.13 renamed them; the GPU machine's torch 2.11 has the old names)
all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
all_gather_autograd = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


class SequenceParallel:
    """One rank holds the whole sequence: every method is the identity."""

    size = 1
    rank = 0

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's tokens of ``x`` along ``dim`` (padded at the end to a multiple of ``size``)."""
        return x

    def local_kv_heads(self, kv_heads: int) -> int:
        """KV heads a rank holds after :meth:`heads` (replicated ones counted once per copy)."""
        return kv_heads

    def heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int):
        """Token-sharded q/k/v [B, H, S, D] -> all ``length`` tokens of this rank's heads [B, H/sp, length, D]."""
        return q, k, v

    def tokens(self, x: torch.Tensor, seq_dim: int, head_dim: int) -> torch.Tensor:
        """Inverse of :meth:`heads` for an attention output holding all tokens of this rank's heads."""
        return x

    def wrap(self, layout: AttentionLayout, length: int) -> AttentionLayout:
        """The layout as the decoder layers of a token-sharded forward call it."""
        return layout

    def local_rows(self, index: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Of rows ``index [N]`` of a sequence of ``length`` tokens: (the local row of each one this
        rank holds, bool [N] which ones)."""
        return index, torch.ones_like(index, dtype=torch.bool)

    def combine(self, values: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
        """Per-row values [owned.sum(), ...] of the rows this rank holds -> all rows [N, ...] on every rank."""
        return values

    def gather_kv(self, kv: torch.Tensor) -> torch.Tensor:
        """The prefix KV decode reads, from the prefill's head-sharded KV [layers, local_kv_heads, P, D]:
        all the model's KV heads on every rank ("gathered" decode), or this rank's ("sharded")."""
        return kv

    def decode_heads(self, num_heads: int, kv_heads: int) -> tuple[int, int]:
        """(query, KV) heads a rank attends with in a decode step."""
        return num_heads, kv_heads

    def decode_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int):
        """A decode step's q/k/v [B, heads * D] -> the columns of the heads this rank attends with."""
        return q, k, v

    def decode_output(self, attn: torch.Tensor) -> torch.Tensor:
        """This rank's heads of a decode step's attention output [B, local heads * D] -> all heads."""
        return attn

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank of the group (so they take the same branch)."""
        return flag


LOCAL = SequenceParallel()
ATTRIBUTE = "longrl_sequence_parallel"


def sequence_parallel(model) -> SequenceParallel:
    """The sequence parallelism ``apply_sequence_parallel`` put on ``model`` (one rank: the identity)."""
    return getattr(model, ATTRIBUTE, LOCAL)


class _SumWithReplicatedGrad(torch.autograd.Function):
    """All-reduce sum whose consumers are replicated: every rank computes the same loss from the
    sum, so each rank's gradient already is the gradient of the sum; the backward passes it through,
    scaled by ``size`` (the gradient convention of this module: parameter gradients average)."""

    @staticmethod
    def forward(ctx, x, group, size):
        ctx.size = size
        return funcol.wait_tensor(funcol.all_reduce(x.contiguous(), "sum", group))

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.size, None, None


class Ulysses(SequenceParallel):
    """Sequence parallelism over the ranks of ``group`` (``size`` > 1)."""

    def __init__(self, group: dist.ProcessGroup, num_heads: int, kv_heads: int, decode: str = "gathered"):
        if decode not in ("gathered", "sharded"):
            raise ValueError(f"unknown sequence-parallel decode {decode!r}; use gathered or sharded")
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        check_heads(self.size, num_heads, kv_heads)
        self.kv_copies = max(1, self.size // kv_heads)  # each KV head replicated this often
        self.decode = decode

    def __deepcopy__(self, memo):  # a reference model copied from the policy shares its group
        return self

    def _all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """Chunk j of x [size, ...] goes to rank j; the result's chunk i came from rank i."""
        return funcol.wait_tensor(funcol.all_to_all_single_autograd(x.contiguous(), None, None, self.group))

    def shard(self, x, dim):
        local = -(-x.shape[dim] // self.size)
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, local * self.size - x.shape[dim]]
        return F.pad(x, pad).narrow(dim, self.rank * local, local)

    def local_kv_heads(self, kv_heads):
        return kv_heads * self.kv_copies // self.size

    def heads(self, q, k, v, length):
        if self.kv_copies > 1:  # repeat_interleave: copies of head h stay adjacent, next to its query heads
            k, v = k.repeat_interleave(self.kv_copies, dim=1), v.repeat_interleave(self.kv_copies, dim=1)
        sizes = [t.shape[1] // self.size for t in (q, k, v)]
        # one all-to-all for q, k and v: [B, size, heads of rank j, S, D] with q|k|v heads stacked
        x = torch.cat([t.unflatten(1, (self.size, -1)) for t in (q, k, v)], dim=2)
        x = self._all_to_all(x.movedim(1, 0))  # [source rank = token shard, B, h, S, D]
        x = x.movedim(0, 2).flatten(2, 3).narrow(2, 0, length)  # [B, h, length, D]
        return x.split(sizes, dim=1)

    def tokens(self, x, seq_dim, head_dim):
        length = x.shape[seq_dim]
        local = -(-length // self.size)
        pad = [0, 0] * (x.dim() - 1 - seq_dim) + [0, local * self.size - length]
        x = F.pad(x, pad).unflatten(seq_dim, (self.size, local))
        x = self._all_to_all(x.movedim(seq_dim, 0))  # [source rank = head shard, x's axes with S tokens]
        return x.movedim(0, head_dim).flatten(head_dim, head_dim + 1)  # rank j's heads are heads j*H/sp...

    def wrap(self, layout, length):
        return UlyssesAttention(layout, self, length)

    def local_rows(self, index, length):
        local = -(-length // self.size)
        owned = index // local == self.rank
        return index[owned] - self.rank * local, owned

    def combine(self, values, owned):
        full = values.new_zeros(owned.shape[0], *values.shape[1:]).index_put((owned,), values)
        return _SumWithReplicatedGrad.apply(full, self.group, self.size)

    def gather_kv(self, kv):
        if self.decode == "sharded":
            return kv
        full = funcol.wait_tensor(all_gather(kv.movedim(1, 0).contiguous(), 0, self.group)).movedim(0, 1)
        return full[:, :: self.kv_copies].contiguous() if self.kv_copies > 1 else full.contiguous()

    # "sharded" decode, head-parallel: the prefix KV stays as the Ulysses prefill left it (each rank
    # all tokens of its heads). Every rank computes the step's q/k/v for all heads (a few rows: cheap),
    # attends with its own heads over its KV (prefix and suffix: 1/sp of the reads), and one all-gather
    # of the [B, heads/sp * D] output per layer rebuilds the input of o_proj. No log-sum-exp merge
    # across ranks is needed: each head's attention is whole on one rank.

    def decode_heads(self, num_heads, kv_heads):
        if self.decode == "gathered":
            return num_heads, kv_heads
        return num_heads // self.size, self.local_kv_heads(kv_heads)

    def decode_qkv(self, q, k, v, head_dim):
        if self.decode == "gathered":
            return q, k, v
        heads = q.shape[1] // head_dim // self.size
        kv_heads = k.shape[1] // head_dim
        kv_local, kv_start = self.local_kv_heads(kv_heads), self.rank * kv_heads // self.size
        q = q[:, self.rank * heads * head_dim : (self.rank + 1) * heads * head_dim]
        k, v = (t[:, kv_start * head_dim : (kv_start + kv_local) * head_dim] for t in (k, v))
        return q, k, v  # column slices: row-strided views, as the unsharded step's split of packed q/k/v

    def all_true(self, flag):
        t = torch.tensor(
            [int(flag)], dtype=torch.int32, device="cuda" if dist.get_backend(self.group) == "nccl" else "cpu"
        )
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return bool(t.item())

    def decode_output(self, attn):
        if self.decode == "gathered":
            return attn
        full = funcol.wait_tensor(all_gather(attn.contiguous(), 0, self.group))  # [sp * B, local heads * D]
        return full.view(self.size, *attn.shape).transpose(0, 1).reshape(attn.shape[0], -1)


class UlyssesAttention(AttentionLayout):
    """An attention layout run over all tokens of this rank's heads (see module docstring)."""

    def __init__(self, inner: AttentionLayout, sp: Ulysses, length: int):
        self.inner, self.sp, self.length = inner, sp, length

    def attend(self, module, query, key, value, scaling):
        q, k, v = self.sp.heads(query, key, value, self.length)
        out = self.inner.attend(module, q, k, v, scaling)  # [B, length, Hq/sp, D]
        return self.sp.tokens(out, seq_dim=1, head_dim=2)  # [B, S, Hq, D]


def check_heads(size: int, num_heads: int, kv_heads: int) -> None:
    """Raise ValueError unless ``size`` ranks can split the query heads and share the KV heads."""
    if num_heads % size:
        raise ValueError(
            f"dist.sp={size} does not divide the model's {num_heads} attention heads; "
            f"use an sp degree that divides {num_heads}"
        )
    if kv_heads % size and size % kv_heads:
        raise ValueError(
            f"dist.sp={size} and the model's {kv_heads} KV heads: one must divide the other "
            f"(KV heads are split over the ranks, or replicated when sp exceeds them); "
            f"use sp in {sorted(d for d in range(1, num_heads + 1) if num_heads % d == 0 and (kv_heads % d == 0 or d % kv_heads == 0))}"
        )
