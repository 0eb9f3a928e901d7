"""Request batching, as TF Serving's `--enable_batching`: concurrent requests to one signature run as one call.

A request's rows wait in its model and signature's queue; the queue's thread
takes the first waiting request, gathers more until `max_batch_size` rows or
`batch_timeout_micros` after the first, then, once one of `num_batch_threads`
is free, runs the signature once on every row that has arrived (up to
`max_batch_size`) and hands each caller its own rows back. A lone request
waits at most the timeout; with a timeout of 0, requests that arrive while a
batch runs form the next one, so batching costs a lone client nothing. The
settings come from a batching parameters file in TF Serving's text format
(`max_batch_size { value: 32 }` ...).
"""

import collections
import concurrent.futures
import dataclasses
import pathlib
import re
import threading
import time

import numpy as np
import tensorflow as tf

from nsladv.serving.errors import ServingError


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingParameters:
    """TF Serving's `BatchingParameters` (session_bundle_config.proto) that this server uses.

    Args:
        max_batch_size: most rows in one call.
        batch_timeout_micros: longest a request waits for others to join it.
        max_enqueued_batches: how many full batches may wait; more is UNAVAILABLE.
        num_batch_threads: threads running batches, across all queues.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "batch_timeout_micros" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"`{field.name}` must be an integer >= {minimum}. Received: {field.name}={value!r}")


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
        self.future = concurrent.futures.Future()


class Batcher:
    """Batches the calls to each (model, version, signature) across concurrent requests.

    Args:
        parameters: `BatchingParameters`.

    `calls` counts the signature calls made, for tests and metrics.
    """

    def __init__(self, parameters=None):
        self.parameters = parameters or BatchingParameters()
        self.calls = 0
        self._calls_lock = threading.Lock()
        self._queues = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.parameters.num_batch_threads, thread_name_prefix="nsladv-batch"
        )
        self._free = threading.Semaphore(self.parameters.num_batch_threads)

    def run(self, key, signature, arrays, *, deadline=None):
        """The signature's outputs for this request's rows, computed in a batch with others.

        A request still queued at `deadline` (`time.monotonic()`) leaves the
        queue with DEADLINE_EXCEEDED.
        """
        request = _Request(arrays)
        limit = self.parameters.max_batch_size
        if request.rows > limit:
            raise ServingError(
                "INVALID_ARGUMENT", f"Task size {request.rows} is larger than maximum batch size {limit}"
            )
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(self, signature)
        queue.put(request)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return request.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            if request.future.cancel():  # still queued: it will not run
                raise ServingError("DEADLINE_EXCEEDED", "Deadline exceeded while waiting for a batch") from None
            return request.future.result()  # its batch is running: it finishes

    def close(self):
        for queue in list(self._queues.values()):
            queue.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Queue:
    """One signature's waiting requests and the thread that forms their batches."""

    def __init__(self, batcher, signature):
        self.batcher = batcher
        self.signature = signature
        self.waiting = collections.deque()
        self.rows = 0
        self.ready = threading.Condition()
        self.open = True
        threading.Thread(target=self._form_batches, name="nsladv-batching", daemon=True).start()

    def put(self, request):
        parameters = self.batcher.parameters
        with self.ready:
            if self.rows + request.rows > parameters.max_enqueued_batches * parameters.max_batch_size:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full")
            self.waiting.append(request)
            self.rows += request.rows
            self.ready.notify()

    def close(self):
        with self.ready:
            self.open = False
            self.ready.notify()

    def _form_batches(self):
        parameters = self.batcher.parameters
        while True:
            with self.ready:
                while self.open and not self.waiting:
                    self.ready.wait()
                if not self.open:
                    return
                deadline = time.monotonic() + parameters.batch_timeout_micros / 1e6
                while self.rows < parameters.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self.ready.wait(left)
            # A batch forms when a thread can run it: what arrives meanwhile joins it.
            self.batcher._free.acquire()
            with self.ready:
                batch, rows = [], 0
                while self.waiting and rows + self.waiting[0].rows <= parameters.max_batch_size:
                    request = self.waiting.popleft()
                    self.rows -= request.rows
                    if request.future.set_running_or_notify_cancel():  # False: its caller gave up
                        batch.append(request)
                        rows += request.rows
            if not batch:
                self.batcher._free.release()
                continue
            try:
                self.batcher._pool.submit(self._run, batch)
            except RuntimeError:  # The batcher closed: nothing will run the batch.
                self.batcher._free.release()
                for request in batch:
                    request.future.set_exception(ServingError("UNAVAILABLE", "The server is shutting down"))
                return

    def _run(self, batch):
        try:
            names = list(batch[0].arrays)
            joined = {n: tf.constant(np.concatenate([r.arrays[n] for r in batch])) for n in names}
            outputs = {k: v.numpy() for k, v in self.signature(**joined).items()}
            with self.batcher._calls_lock:
                self.batcher.calls += 1
            start = 0
            for request in batch:
                end = start + request.rows
                request.future.set_result({k: v[start:end] for k, v in outputs.items()})
                start = end
        except Exception as error:  # every caller of the batch gets the failure
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        finally:
            self.batcher._free.release()
