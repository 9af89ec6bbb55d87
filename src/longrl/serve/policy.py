"""The model side of the server: requests -> Prompts -> one ``generate`` call per compatible group.

Runs in the batcher's single worker thread (the model is used by one thread at a time). Requests
of one batch that share (n, temperature, top_p) decode together in one ``generate`` call, each
prompt's n samples over one shared prefix; max_tokens may differ (the call runs to the largest and
each sample is cut at its own: the counter-based sampler makes a sample's first k tokens the same
whatever the call's length). A sampled request with a ``seed`` gets a call of its own, so its
samples are rows 0..n-1 of that seed, the same however many other requests were waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch

from longrl.models.adapter import build_prompt, end_of_turn_id
from longrl.rollout import RolloutConfig, Sample, SamplingParams, generate
from longrl.serve.config import ServeConfig
from longrl.serve.errors import APIError, bad_request
from longrl.serve.media import MediaRef, load_media
from longrl.serve.protocol import ChatRequest


@dataclass
class Job:
    request: ChatRequest
    messages: list[dict]  # chat-template messages (media parts reduced to {"type": "video"})
    media: MediaRef | None


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    pieces: list[str]  # the text each kept token adds (for streaming and logprobs)
    logprobs: list[float]


@dataclass
class Completion:
    prompt_tokens: int
    choices: list[Choice] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.pieces) for c in self.choices)


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The decoded text each token adds; bytes of a character split over tokens wait for its end."""
    pieces, shown = [], ""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if text.endswith("\ufffd") and k < len(ids):
            pieces.append("")
            continue
        pieces.append(text[len(shown) :])
        shown = text
    return pieces


class Policy:
    def __init__(self, model, tokenizer, cfg: ServeConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        stops = {end_of_turn_id(tokenizer), tokenizer.eos_token_id}
        self.stop_ids = tuple(sorted(t for t in stops if isinstance(t, int) and t >= 0))
        self.rollout = RolloutConfig(max_prompts_per_batch=cfg.max_batch_prompts)
        self.generate_calls = 0  # generate() calls made
        self.prompts_generated = 0  # prompts they decoded

    # -- prompts ---------------------------------------------------------------------------------

    def _prompt(self, job: Job):
        vision = load_media(job.media, self.cfg) if job.media is not None else None
        try:
            prompt = build_prompt(self.model, self.tokenizer, job.messages, vision)
        except ValueError as error:  # a chat template that rejects the messages
            raise bad_request(f"messages: {error}", param="messages") from None
        length, limit = len(prompt), self.cfg.max_context_tokens
        asked = job.request.max_completion_tokens or job.request.max_tokens
        if length >= limit or (asked and length + asked > limit):
            size = (
                f"{length + asked} tokens ({length} in the prompt + max_tokens={asked})"
                if asked
                else f"{length} prompt tokens"
            )
            raise APIError(
                400,
                f"this request is {size}, more than this server's context of {limit} tokens (--max-context-tokens); send "
                "fewer frames or less text, or lower max_tokens",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = asked or min(self.cfg.default_max_tokens, limit - length)
        return prompt, max_tokens

    # -- one batch -------------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> list[Completion | APIError]:
        """One result per job, in order: its completion, or the APIError that refuses it."""
        results: list[Completion | APIError | None] = [None] * len(jobs)
        groups: dict[tuple, list[tuple[int, Any, int]]] = {}
        for i, job in enumerate(jobs):
            try:
                prompt, max_tokens = self._prompt(job)
            except APIError as error:
                results[i] = error
                continue
            r = job.request
            greedy = r.temperature == 0
            key = (
                r.n,
                0.0 if greedy else r.temperature,
                1.0 if greedy else r.top_p,
                i if r.seed is not None and not greedy else -1,
            )
            groups.setdefault(key, []).append((i, prompt, max_tokens))
        for (n, temperature, top_p, _), members in groups.items():
            params = SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                stop_token_ids=self.stop_ids,
                max_new_tokens=max(m for _, _, m in members),
                seed=jobs[members[0][0]].request.seed,
            )
            for (i, prompt, max_tokens), samples in zip(members, self._generate([p for _, p, _ in members], params)):
                results[i] = (
                    samples
                    if isinstance(samples, APIError)
                    else self._completion(jobs[i], len(prompt), samples, max_tokens)
                )
        return cast(list[Completion | APIError], results)  # every job got one

    def _generate(self, prompts: list, params: SamplingParams) -> list:
        try:
            return self._call(prompts, params)
        except ValueError:
            if len(prompts) == 1:
                raise
        # One bad prompt fails the whole call: run them one by one so only it is refused.
        out: list[list[Sample] | APIError] = []
        for prompt in prompts:
            try:
                out.append(self._call([prompt], params)[0])
            except ValueError as error:
                out.append(bad_request(f"messages: {error}", param="messages"))
        return out

    def _call(self, prompts: list, params: SamplingParams) -> list[list[Sample]]:
        with torch.no_grad():
            out = generate(self.model, prompts, params, config=self.rollout)
        self.generate_calls += 1
        self.prompts_generated += len(prompts)
        return out

    def _completion(self, job: Job, prompt_tokens: int, samples: list[Sample], max_tokens: int) -> Completion:
        completion = Completion(prompt_tokens)
        stops = job.request.stop_strings
        for sample in samples:
            ids, lps, reason = sample.token_ids, sample.logprobs, sample.finish_reason
            if len(ids) > max_tokens:
                ids, lps, reason = ids[:max_tokens], lps[:max_tokens], "length"
            pieces = token_pieces(self.tokenizer, ids)
            text = "".join(pieces)
            cut = min((at for at in (text.find(s) for s in stops) if at >= 0), default=-1)
            if cut >= 0:  # a stop string ends the text before it, as OpenAI's API does
                kept, length = [], 0
                for piece in pieces:
                    if length >= cut:
                        break
                    kept.append(piece if length + len(piece) <= cut else piece[: cut - length])
                    length += len(piece)
                pieces, lps, text, reason = kept, lps[: len(kept)], text[:cut], "stop"
            completion.choices.append(Choice(text, reason, pieces, lps[: len(pieces)]))
        return completion
