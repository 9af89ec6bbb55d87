"""A small async batcher: requests wait a few ms for company, then one worker thread runs them.

Each request's future resolves with its own result. While the worker generates, new requests
queue up and form the next batch, so under load a call holds up to ``max_prompts`` requests.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from longrl.serve.errors import APIError

log = logging.getLogger("longrl.serve")


class Batcher:
    def __init__(self, run_batch, *, wait_s: float, max_prompts: int, max_queue: int):
        self.run_batch = run_batch  # list[job] -> list[result | APIError], called in the worker thread
        self.wait_s, self.max_prompts, self.max_queue = wait_s, max_prompts, max_queue
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longrl-generate")
        self.batches = 0

    async def submit(self, job):
        if self.queue.qsize() >= self.max_queue:
            raise APIError(
                429,
                f"the server has {self.max_queue} requests waiting (--max-queue); retry shortly",
                type="rate_limit_error",
                code="queue_full",
            )
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((job, future))
        return await future

    async def run(self) -> None:
        """The batching loop; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            assert self.queue is not None, "start() creates the queue before run()"
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_prompts:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            live = [(job, future) for job, future in batch if not future.done()]  # skip cancelled requests
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [job for job, _ in live])
            except Exception as error:  # noqa: BLE001 -- a bug or an out-of-memory: fail this batch, keep serving
                log.exception("generation failed for a batch of %d requests", len(live))
                failure = APIError(
                    500,
                    f"generation failed: {type(error).__name__}: {str(error)[:300]}",
                    type="server_error",
                    code="generation_failed",
                )
                results = [failure] * len(live)
            self.batches += 1
            for (_, future), result in zip(live, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def start(self) -> asyncio.Task:
        self.queue = asyncio.Queue()
        return asyncio.create_task(self.run())

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
