"""Request batching, as TF Serving's `--enable_batching`: concurrent requests to one signature run as one call.

A request's rows wait in its model and signature's queue. A batch opens with
the oldest waiting request and closes at `max_batch_size` rows or
`batch_timeout_micros` after that request arrived; once one of
`num_batch_threads` is free, the signature runs once on every row that has
arrived (up to `max_batch_size`, first come first served) and each caller gets
its own rows back. More than `max_enqueued_batches` full batches waiting is
UNAVAILABLE, a request larger than a batch INVALID_ARGUMENT, as in TF
Serving's batch scheduler.

The batch runs in the thread of one of its callers (the first to find a free
slot), not in a thread of its own: a lone request then costs no thread
handoff, and with a timeout of 0 requests that arrive while a batch runs form
the next one. The settings come from a batching parameters file in TF
Serving's text format (`max_batch_size { value: 32 }` ...).
"""

import collections
import dataclasses
import pathlib
import re
import threading
import time

import numpy as np
import tensorflow as tf

from nsladv.serving.errors import ServingError
from nsladv.settings_checks import integer


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingParameters:
    """TF Serving's `BatchingParameters` (session_bundle_config.proto) that this server uses.

    Args:
        max_batch_size: most rows in one call.
        batch_timeout_micros: longest a request waits for others to join it.
        max_enqueued_batches: how many full batches may wait; more is UNAVAILABLE.
        num_batch_threads: batches running at once, across all queues.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "batch_timeout_micros" else 1
            integer(field.name, value, minimum=minimum)


_FIELD = re.compile(r"(\w+)\s*\{\s*value:\s*(\d+)\s*\}")
_IGNORED = ("allowed_batch_sizes", "pad_variable_length_inputs", "enable_large_batch_splitting")


def read_batching_parameters(path):
    """The `BatchingParameters` of a TF Serving batching parameters file (text format)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No batching parameters file at {path}. Received: {str(path)!r}")
    text = re.sub(r"#.*", "", path.read_text())
    known = {f.name for f in dataclasses.fields(BatchingParameters)}
    found = {}
    for name, value in _FIELD.findall(text):
        if name in known:
            found[name] = int(value)
        elif name not in _IGNORED:
            raise ValueError(f"Unknown batching parameter {name!r} in {path}. Expected some of {sorted(known)}")
    leftover = _FIELD.sub("", text)
    leftover = re.sub(r"\b(" + "|".join(_IGNORED) + r")\s*(:\s*\S+|\{[^}]*\})", "", leftover).strip()
    if leftover:
        raise ValueError(
            f"Cannot read {path}: expected lines like `max_batch_size {{ value: 32 }}`. Received: {leftover!r}"
        )
    return BatchingParameters(**found)


class _Request:
    def __init__(self, arrays):
        self.arrays = arrays
        self.rows = len(next(iter(arrays.values())))
        self.arrived = time.monotonic()
        self.taken = False  # in a batch: it will get its rows or the batch's error
        self.done = False
        self.result = self.error = None
        self.wake = threading.Event()  # set when it is done, or may have become able to run a batch


class Batcher:
    """Batches the calls to each (model, version, signature) across concurrent requests.

    Args:
        parameters: `BatchingParameters`.

    `calls` counts the signature calls made, for tests and metrics.
    """

    def __init__(self, parameters=None):
        self.parameters = parameters or BatchingParameters()
        self.calls = 0
        self._queues = {}  # key -> deque of waiting _Requests
        self._running = 0  # batches running, across all queues
        self._open = True
        self._lock = threading.Lock()

    def run(self, key, signature, arrays, *, deadline=None):
        """The signature's outputs for this request's rows, computed in a batch with others.

        A request still queued at `deadline` (`time.monotonic()`) leaves the
        queue with DEADLINE_EXCEEDED; one whose batch runs gets its rows.
        """
        parameters = self.parameters
        request = _Request(arrays)
        if request.rows > parameters.max_batch_size:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Task size {request.rows} is larger than maximum batch size {parameters.max_batch_size}",
            )
        with self._lock:
            if not self._open:
                raise ServingError("UNAVAILABLE", "The server is shutting down")
            queue = self._queues.setdefault(key, collections.deque())
            if sum(r.rows for r in queue) + request.rows > parameters.max_enqueued_batches * parameters.max_batch_size:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full")
            queue.append(request)
            if queue[0] is not request and sum(r.rows for r in queue) >= parameters.max_batch_size:
                queue[0].wake.set()  # the head's batch is full: it need not wait for its timeout
        while True:
            with self._lock:
                batch, wait = self._next(queue, request, deadline)
            if batch is not None:
                self._run(signature, batch)
            if request.done:
                break
            if batch is None:
                request.wake.wait(wait)
                request.wake.clear()
        if request.error is not None:
            raise request.error
        return request.result

    def _next(self, queue, request, deadline):
        """Under the lock: (a batch this thread takes and runs, or None; how long to wait otherwise)."""
        parameters = self.parameters
        if request.done:
            return None, None
        wait = None
        if queue and queue[0] is request and self._running < parameters.num_batch_threads:
            # The oldest waiting request's batch closes when full or at its timeout; its thread runs it.
            closes = request.arrived + parameters.batch_timeout_micros / 1e6
            now = time.monotonic()
            if now >= closes or sum(r.rows for r in queue) >= parameters.max_batch_size:
                batch, size = [], 0
                while queue and size + queue[0].rows <= parameters.max_batch_size:
                    taken = queue.popleft()
                    taken.taken = True
                    batch.append(taken)
                    size += taken.rows
                self._running += 1
                return batch, None
            wait = closes - now
        if deadline is not None and not request.taken:
            left = deadline - time.monotonic()
            if left <= 0:
                queue.remove(request)
                if queue:
                    queue[0].wake.set()
                raise ServingError("DEADLINE_EXCEEDED", "Deadline exceeded while waiting for a batch")
            wait = left if wait is None else min(wait, left)
        return None, wait

    def _run(self, signature, batch):
        try:
            if len(batch) == 1:  # a lone request: its own arrays, not a copy
                joined = batch[0].arrays
            else:
                joined = {n: np.concatenate([r.arrays[n] for r in batch]) for n in batch[0].arrays}
            outputs = {k: v.numpy() for k, v in signature(**{n: tf.constant(a) for n, a in joined.items()}).items()}
            start = 0
            for request in batch:
                end = start + request.rows
                request.result = {k: v[start:end] for k, v in outputs.items()}
                start = end
        except Exception as error:  # every caller of the batch gets the failure
            for request in batch:
                request.error = error
        with self._lock:
            self.calls += 1
            self._running -= 1
            for request in batch:
                request.done = True
                request.wake.set()
            for queue in self._queues.values():  # a slot is free: each queue's oldest request may run its batch
                if queue:
                    queue[0].wake.set()

    def close(self):
        """Refuses new requests; the waiting ones fail with UNAVAILABLE."""
        with self._lock:
            self._open = False
            for queue in self._queues.values():
                while queue:
                    request = queue.popleft()
                    request.error, request.done = ServingError("UNAVAILABLE", "The server is shutting down"), True
                    request.wake.set()
