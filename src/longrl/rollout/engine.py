"""``generate``: prefill each prompt once, decode its n samples over one shared prefix KV.

A batch of prompts decodes in lock-step. Every buffer a decode step touches is static (suffix
KV, the tokens fed and sampled, the step counter, finished flags), so on CUDA one step is
captured as a CUDA graph and replayed: the host only launches replays and, every few steps,
checks which samples have finished. When whole prompts have finished, the batch is compacted
to the others (their prefix reads and rows stop costing anything); finished samples inside a
live prompt ride along as extra rows of memory-bound matmuls, which is free.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from longrl.rollout.config import RolloutConfig
from longrl.rollout.decoder import TextDecoder
from longrl.rollout.ops import DecodeOps
from longrl.rollout.prefill import PrefixKV, prefill
from longrl.rollout.prompts import PromptEmbedder, check_prompts
from longrl.rollout.sampling import Sample, SamplingParams, hashed_vocab, row_keys


class DecodeBatch:
    """Static state of some prompts x n samples decoding together.

    Prompt g owns rows [g*n, (g+1)*n). ``step`` (0-d) is the index, within the response, of the
    token in ``current``: a decode step feeds it, writes its KV at suffix slot ``step`` and samples
    response token ``step + 1``.
    """

    def __init__(
        self,
        dec: TextDecoder,
        ops: DecodeOps,
        params: SamplingParams,
        prompt_index: list[int],
        prefixes: list[PrefixKV],
        next_position: torch.Tensor,
        keys: torch.Tensor,
        stop_ids: torch.Tensor,
        suffix_capacity: int,
    ):
        self.dec, self.ops, self.params = dec, ops, params
        self.n = params.n
        self.prompt_index = prompt_index
        self.prefixes = prefixes
        self.next_position = next_position  # [B] position of response token 0
        self.keys = keys  # [B] sampling keys
        self.stop_ids = stop_ids
        rows, dev = len(prompt_index) * self.n, dec.device
        self.tokens = torch.zeros(rows, params.max_new_tokens, dtype=torch.long, device=dev)
        self.logprobs = torch.zeros(rows, params.max_new_tokens, dtype=torch.float32, device=dev)
        self.current = torch.zeros(rows, dtype=torch.long, device=dev)
        self.step = torch.zeros((), dtype=torch.long, device=dev)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        shape = (dec.num_layers, rows, dec.decode_kv_heads, suffix_capacity, dec.head_dim)
        self.suffix_k = torch.zeros(shape, dtype=dec.dtype, device=dev)
        self.suffix_v = torch.zeros(shape, dtype=dec.dtype, device=dev)
        self.vocab_hash = hashed_vocab(dec.vocab_size, dev)
        # Rotary cos/sin of every response index, per prompt ([prompts, T, D]; its n samples share
        # positions): a step reads index ``step`` instead of running the rotary module (a handful
        # of small kernels). Response tokens are text: all three M-RoPE axes advance together.
        positions = next_position[:: self.n, None] + torch.arange(params.max_new_tokens, device=dev)
        self.cos, self.sin = dec.rope(positions[:, :, None].to(dec.dtype), positions[None].expand(3, -1, -1))
        self.plan = ops.plan(dec, [len(p) for p in prefixes], self.n)

    @property
    def rows(self) -> int:
        return self.current.shape[0]

    def _record(self, h: torch.Tensor, delta: torch.Tensor | None, index: torch.Tensor) -> None:
        """Sample response token ``index`` (0-d) from the last layer's output; make it current."""
        tokens, logprobs = self.ops.head(self.dec, h, delta, self.keys, index, self.vocab_hash, self.params)
        self.tokens.index_copy_(1, index.view(1), tokens[:, None])
        self.logprobs.index_copy_(1, index.view(1), logprobs[:, None])
        self.current.copy_(tokens)
        self.finished |= (tokens[:, None] == self.stop_ids[None, :]).any(-1)

    def start(self, last_hidden: torch.Tensor) -> None:
        """Sample token 0 of every row from its prompt's last prefill hidden state [prompts, H]."""
        self._record(last_hidden.repeat_interleave(self.n, dim=0), None, self.step)

    def decode_step(self, window: int) -> None:
        """One token for every row; the suffix attention reads the first ``window`` slots."""
        h, delta = self.ops.decode_layers(self, self.dec.embed(self.current), window)
        self._record(h, delta, self.step + 1)
        self.step += 1

    def select(self, keep: list[int]) -> DecodeBatch:
        """A new batch holding only prompt groups ``keep`` (indices into this batch's prompts)."""
        rows = torch.tensor([g * self.n + j for g in keep for j in range(self.n)], device=self.current.device)
        new = DecodeBatch.__new__(DecodeBatch)
        new.dec, new.ops, new.params, new.n = self.dec, self.ops, self.params, self.n
        new.prompt_index = [self.prompt_index[g] for g in keep]
        new.prefixes = [self.prefixes[g] for g in keep]
        new.stop_ids, new.vocab_hash = self.stop_ids, self.vocab_hash
        for name in ("next_position", "keys", "tokens", "logprobs", "current", "finished"):
            setattr(new, name, getattr(self, name).index_select(0, rows))
        groups = torch.tensor(keep, device=self.current.device)
        new.cos, new.sin = self.cos.index_select(0, groups), self.sin.index_select(0, groups)
        new.plan = self.ops.plan(self.dec, [len(p) for p in new.prefixes], self.n)
        new.step = self.step.clone()
        new.suffix_k = self.suffix_k.index_select(1, rows)
        new.suffix_v = self.suffix_v.index_select(1, rows)
        return new

    def samples(self, group: int, steps_done: int) -> list[Sample]:
        """The n finished samples of prompt group ``group``, cut at their first stop token."""
        rows = slice(group * self.n, (group + 1) * self.n)
        tokens = self.tokens[rows, :steps_done].tolist()
        logprobs = self.logprobs[rows, :steps_done].tolist()
        stops = set(self.stop_ids.tolist())
        out = []
        for toks, lps in zip(tokens, logprobs):
            end = next((j + 1 for j, tok in enumerate(toks) if tok in stops), None)
            if end is None:
                out.append(Sample(toks, lps, "length"))
            else:
                out.append(Sample(toks[:end], lps[:end], "stop"))
        return out


class StepRunner:
    """Runs decode steps eagerly, or through one CUDA graph per suffix window."""

    def __init__(self, batch: DecodeBatch, use_graphs: bool, stats: dict, timed: bool):
        self.batch = batch
        self.use_graphs = use_graphs
        self.stats = stats
        self.timed = timed
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle() if use_graphs else None

    def _eager(self, window: int) -> None:
        ops = self.batch.ops
        try:
            self.batch.decode_step(window)
        except Exception as error:  # a compile failure: the step is idempotent until it completes
            if not ops.compiled:
                raise
            ops.fall_back_to_eager(error)
            self.batch.decode_step(window)

    def _capture(self, window: int) -> torch.cuda.CUDAGraph:
        # torch.cuda.graph() minus its empty_cache(): freeing the allocator's cache before every
        # capture would make the next prefill pay for fresh cudaMallocs.
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            graph.capture_begin(pool=self.pool)
            try:
                self.batch.decode_step(window)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(side)
        return graph

    def __call__(self, window: int) -> None:
        if not self.use_graphs:
            self._eager(window)
            return
        graph = self.graphs.get(window)
        if graph is not None:
            graph.replay()
            return
        # The first step at a new window runs eagerly (compiling and warming kernels and
        # cuBLAS); capture then records the next one without running it.
        t0 = _sync_time(self.batch.dec.device) if self.timed else 0.0
        self._eager(window)
        self.graphs[window] = self._capture(window)
        self.stats["graph_captures"] += 1
        if self.timed:
            self.stats["eager_steps"] += 1
            self.stats["capture_s"] += _sync_time(self.batch.dec.device) - t0


def suffix_window(length: int, capacity: int, smallest: int = 256) -> int:
    """Suffix slots a step reads: the next power of two >= length, at least ``smallest`` (few
    graphs to capture; the masked extra slots cost little next to the prefix)."""
    return min(capacity, max(smallest, 1 << math.ceil(math.log2(max(length, 1)))))


def prompt_batches(lengths: list[int], max_prompts: int, max_tokens: int) -> list[list[int]]:
    """Consecutive prompts grouped under a prompt count and a prefix-token budget (0 = none)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i, length in enumerate(lengths):
        if cur and (len(cur) >= max_prompts or (max_tokens and cur_tokens + length > max_tokens)):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += length
    if cur:
        batches.append(cur)
    return batches


def _decode(
    batch: DecodeBatch, config: RolloutConfig, use_graphs: bool, results: list, stats: dict, timed: bool
) -> None:
    steps = batch.params.max_new_tokens
    capacity = batch.suffix_k.shape[3]
    runner = StepRunner(batch, use_graphs, stats, timed)
    done_at = 1  # tokens sampled so far
    while True:
        if done_at >= steps or done_at % config.finish_check_interval == 0:
            finished = batch.finished.view(-1, batch.n).all(-1).tolist()
            if done_at >= steps or all(finished):
                for g, p in enumerate(batch.prompt_index):
                    results[p] = batch.samples(g, done_at)
                stats["decode_steps"] = stats.get("decode_steps", 0) + done_at - 1
                return
            done = [g for g, f in enumerate(finished) if f]
            if done and len(done) >= max(1, len(finished) // 4):
                for g in done:
                    results[batch.prompt_index[g]] = batch.samples(g, done_at)
                batch = batch.select([g for g, f in enumerate(finished) if not f])
                runner = StepRunner(batch, use_graphs, stats, timed)
        runner(capacity if batch.ops.fixed_window else suffix_window(done_at, capacity))
        done_at += 1


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def decode_ops(config: RolloutConfig, device: torch.device) -> DecodeOps:
    """What a decode step runs on ``device``: compiled glue, Triton kernels and packed weights on
    CUDA (each switchable in the config), plain eager PyTorch on CPU."""
    cuda = device.type == "cuda"
    return DecodeOps(
        compile=config.compile and cuda,
        gpu_kernels=config.use_triton and cuda and _has_triton(),
        pack=config.pack_weights and cuda,
    )


def _prefill(dec: TextDecoder, prompt, chunk: int, compiled: bool) -> tuple[PrefixKV, torch.Tensor, bool]:
    """:func:`prefill` compiled if asked, falling back to eager (for good) if compiling fails."""
    try:
        return (*prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk, compiled), compiled)
    except torch.OutOfMemoryError:
        raise  # not a compiler failure: eager would run out too
    except Exception as error:  # noqa: BLE001 -- a compiler failure; an eager error re-raises below
        if not compiled:
            raise
        warnings.warn(
            f"compiled prefill failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); prefilling eagerly",
            stacklevel=2,
        )
        return (*prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk, False), False)


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def generate(
    model, prompts: list, params: SamplingParams, *, config: RolloutConfig | None = None, stats: dict | None = None
) -> list[list[Sample]]:
    """Sample ``params.n`` responses for each prompt; returns one list of n Samples per prompt.

    ``stats``, when given, receives timings (the device is synchronised at phase boundaries only
    then): prefill_s, pack_s (taking the decode weights, packing them), decode_s (all decode
    steps), capture_s (of it, the eager first step and the capture at each new graph:
    eager_steps of the decode_steps), graph_captures, and packed_weight_gb (the transient packed
    q/k/v and gate/up copies, ``RolloutConfig.pack_weights``).
    """
    config = config or RolloutConfig()
    dec = TextDecoder(model)
    params.validate(dec.vocab_size)
    check_prompts(prompts, dec, params.max_new_tokens, config.max_context_tokens)
    seed = params.seed if params.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    use_graphs = config.cuda_graphs and dec.device.type == "cuda"
    ops = decode_ops(config, dec.device)
    timed = stats is not None
    stats = stats if stats is not None else {}
    stats.update(
        prefill_s=0.0, pack_s=0.0, decode_s=0.0, decode_steps=0, graph_captures=0, eager_steps=0, capture_s=0.0
    )
    stop_ids = torch.tensor(list(params.stop_token_ids) or [-1], dtype=torch.long, device=dec.device)
    results: list = [None] * len(prompts)
    compiled_prefill = config.compile and dec.device.type == "cuda"
    with torch.no_grad():
        lengths = [len(p.input_ids) for p in prompts]
        for members in prompt_batches(lengths, config.max_prompts_per_batch, config.max_batch_prefix_tokens):
            t0 = _sync_time(dec.device) if timed else 0.0
            prefixes, last_hidden = [], []
            for i in members:
                prefix, hidden, compiled_prefill = _prefill(
                    dec, prompts[i], config.prefill_chunk_tokens, compiled_prefill
                )
                prefixes.append(prefix)
                last_hidden.append(hidden)
            t1 = _sync_time(dec.device) if timed else 0.0
            ops.prepare(dec)  # after the first prefill: the packed copies add nothing to its peak
            t_pack = _sync_time(dec.device) if timed else 0.0
            rows = torch.tensor([i * params.n + j for i in members for j in range(params.n)], device=dec.device)
            next_position = torch.tensor(
                [prompts[i].next_position for i in members], device=dec.device
            ).repeat_interleave(params.n)
            batch = DecodeBatch(
                dec,
                ops,
                params,
                members,
                prefixes,
                next_position,
                row_keys(seed, rows),
                stop_ids,
                suffix_capacity=max(1, params.max_new_tokens - 1),
            )
            batch.start(torch.stack(last_hidden))
            _decode(batch, config, use_graphs, results, stats, timed)
            del batch, prefixes
            if timed:
                t2 = _sync_time(dec.device)
                stats["prefill_s"] += t1 - t0
                stats["pack_s"] += t_pack - t1
                stats["decode_s"] += t2 - t_pack
    stats["compiled"] = ops.compiled
    stats["packed_weight_gb"] = round(ops.packed_bytes() / 2**30, 2)
    del ops  # the packed weight copies go with it
    return results
