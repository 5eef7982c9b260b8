"""The micro-batcher: pictures of concurrent requests captioned together in shared forward passes."""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time

from fastapi import HTTPException

from ..device import check_threads

log = logging.getLogger("showtell")


class MicroBatcher:
    """Collects pictures from concurrent requests and captions them in shared forward passes."""

    def __init__(self, captioner, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256):
        self.captioner, self.max_batch, self.max_wait = captioner, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.queue: queue.Queue = queue.Queue()
        self.waiting = 0
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0, "requests": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="showtell-batcher", daemon=True)
        self._thread.start()

    def submit(self, tensors: list, options) -> concurrent.futures.Future:
        """Queue prepared pictures to caption with `options` (a DecodeOptions); 503 when too many wait."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.waiting + len(tensors) > self.max_queue:
                raise HTTPException(503, "busy: too many pictures waiting; try again shortly")
            self.waiting += len(tensors)
        self.queue.put((tensors, options, future))
        return future

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, count = [first], len(first[0])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                try:
                    job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.queue.put(None)
                    break
                jobs.append(job)
                count += len(job[0])
            groups: dict[tuple, list] = {}
            for job in jobs:
                groups.setdefault(job[1], []).append(job)
            for options, group in groups.items():
                batch = [t for tensors, _, _ in group for t in tensors]
                check_threads()   # the batcher owns the service's long work: it follows the thread policy
                try:
                    hyps = self.captioner.caption_tensors(batch, options)
                except Exception as error:  # a model failure is ours, not the client's: 500 with a message
                    log.exception("captioning failed")
                    for _, _, future in group:
                        future.set_exception(error)
                    continue
                finally:
                    with self._lock:
                        self.waiting -= len(batch)
                with self._lock:
                    self.stats["batches"] += 1
                    self.stats["images"] += len(batch)
                    self.stats["requests"] += len(group)
                    self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                start = 0
                for tensors, _, future in group:
                    future.set_result(hyps[start:start + len(tensors)])
                    start += len(tensors)
