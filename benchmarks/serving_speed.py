"""Predict throughput and latency over TF Serving's REST and gRPC APIs (nsladv serve).

Exports the MNIST pipeline's CNN, starts `nsladv serve` in a subprocess on
loopback, and sends batch-1 predict requests from 1, 4 and 16 client threads
over REST, over gRPC, and, as the reference, straight to the SavedModel in
this process. Each cell is bounded by a request count and a time limit; the
transports take turns at each concurrency level.

Usage: python -m benchmarks.serving_speed [--requests 300] [--seconds 20]
The last line printed is one JSON object.
"""

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from nsladv import export
from nsladv.pipelines.mnist import build_model
from nsladv.serving import GrpcClient
from nsladv.serving import RestClient


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(client, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        try:
            client.status("mnist")
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError("the server did not come up")


def measure(call, concurrency, requests, seconds):
    latencies = []
    deadline = time.perf_counter() + seconds

    def worker(count):
        own = []
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            call()
            own.append(time.perf_counter() - start)
        return own

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for own in pool.map(worker, [requests // concurrency] * concurrency):
            latencies.extend(own)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per cell (default 300)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per cell (default 20)")
    args = parser.parse_args()
    image = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        path = export.export_model(build_model((28, 28, 1), 10), workdir, "mnist", input_shape=(28, 28, 1))
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        rest_port, grpc_port = free_port(), free_port()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsladv.jobs.cli",
                "serve",
                workdir,
                "--rest-port",
                str(rest_port),
                "--grpc-port",
                str(grpc_port),
                "--poll-seconds",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            rest = RestClient(f"http://127.0.0.1:{rest_port}")
            grpc_client = GrpcClient(f"127.0.0.1:{grpc_port}")
            wait_for(rest)
            transports = {
                "in_process": lambda: signature(image=tf.constant(image)),
                "rest": lambda: rest.predict("mnist", {"image": image}),
                "grpc": lambda: grpc_client.predict("mnist", {"image": image}),
            }
            for call in transports.values():  # warm-up
                for _ in range(10):
                    call()
            results = {}
            for concurrency in (1, 4, 16):
                for name, call in transports.items():
                    results[f"{name}@{concurrency}"] = measure(call, concurrency, args.requests, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"batch-1 predict, {args.requests} requests or {args.seconds:g} s per cell, server in a subprocess on loopback"
    )
    print(f"{'transport':<12} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for key, row in results.items():
        name, concurrency = key.split("@")
        print(f"{name:<12} {concurrency:>7} {row['per_second']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
