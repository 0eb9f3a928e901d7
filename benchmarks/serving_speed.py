"""Predict throughput and latency over TF Serving's REST and gRPC APIs (nsladv serve), with and without batching.

Exports the MNIST pipeline's CNN, starts two `nsladv serve` subprocesses on
loopback, one plain and one with `--enable_batching` (max_batch_size 32,
batch_timeout_micros 0, one batch thread: requests that arrive while a batch
runs form the next one), and sends batch-1 predict requests from 1 and 16
client threads over REST, over gRPC, and, as the reference, straight to the
SavedModel in this process.

Both servers also serve a linear model (one dense layer on the 784 pixels),
exported the same way, whose call costs next to nothing beside the serving
path: over gRPC it shows what batching could give if the model were free.
`grpc_batched_linear_over_unbatched_16` (batched, linear model, over unbatched,
the CNN) is that ceiling for `grpc_batched_over_unbatched_16`.

Each cell runs for `--seconds` (or `--requests`, whichever ends first); the
contenders take turns at each concurrency level (A B C ... A B C ...),
`--rounds` times, after a warm-up. The table gives each cell's median over
rounds; each ratio is the median over rounds of the ratio measured within one
round (the two cells a few seconds apart).

The clients are lean, so that they measure the server rather than themselves
(they share the 2 cores with it): each sends one request serialized once (the
gRPC PredictRequest's bytes through the channel's raw method; the REST JSON
body over a kept-alive connection per thread) and checks the reply's status.
Before timing, every contender's reply is decoded once and checked against the
in-process model's classes.

Usage: python -m benchmarks.serving_speed [--seconds 3] [--requests 100000] [--rounds 5]
The last line printed is one JSON object.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

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


def start_server(workdir, env, *extra):
    rest_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "nsladv.jobs.cli", "serve", workdir, "--rest-port", str(rest_port)]
    command += ["--grpc-port", str(grpc_port), "--poll-seconds", "0", *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    rest = RestClient(f"http://127.0.0.1:{rest_port}")
    wait_for(rest)
    return process, rest, GrpcClient(f"127.0.0.1:{grpc_port}")


def grpc_call(client, image, model="mnist"):
    """A batch-1 Predict whose request is serialized once: the call sends bytes and receives bytes."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    body = request.SerializeToString()
    method = client.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    return lambda: method(body, timeout=30)


def rest_call(client, image):
    """A batch-1 predict over one kept-alive HTTP connection per client thread; the body is encoded once."""
    host, port = client.url.removeprefix("http://").split(":")
    body = json.dumps({"inputs": {"image": image.tolist()}}).encode()
    local = threading.local()

    def call():
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        local.connection.request("POST", "/v1/models/mnist:predict", body, {"Content-Type": "application/json"})
        response = local.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return data

    return call


def median_cell(rows):
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per cell (default 3)")
    parser.add_argument("--requests", type=int, default=100_000, help="most requests per cell (default 100000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every cell (default 5)")
    args = parser.parse_args()
    image = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    servers = []
    with tempfile.TemporaryDirectory() as workdir:
        path = export.export_model(build_model((28, 28, 1), 10), workdir, "mnist", input_shape=(28, 28, 1))
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        linear = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        linear_path = export.export_model(linear, workdir, "linear", input_shape=(28, 28, 1))
        linear_signature = tf.saved_model.load(str(linear_path)).signatures["serving_default"]
        parameters = os.path.join(workdir, "batching.config")
        with open(parameters, "w") as f:
            f.write("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 1 }\n")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        try:
            plain = start_server(workdir, env)
            servers.append(plain[0])
            batched = start_server(workdir, env, "--enable_batching", "--batching_parameters_file", parameters)
            servers.append(batched[0])
            contenders = {
                "in_process": lambda: signature(image=tf.constant(image)),
                "rest": rest_call(plain[1], image),
                "rest_batched": rest_call(batched[1], image),
                "grpc": grpc_call(plain[2], image),
                "grpc_batched": grpc_call(batched[2], image),
                "grpc_linear": grpc_call(plain[2], image, "linear"),
                "grpc_batched_linear": grpc_call(batched[2], image, "linear"),
            }
            for name, call in contenders.items():  # every reply decoded once and checked, then a warm-up
                model = linear_signature if name.endswith("linear") else signature
                expected = int(model(image=tf.constant(image))["class_ids"].numpy()[0])
                reply = call()
                if name.startswith("grpc"):
                    got = tf.make_ndarray(predict_pb2.PredictResponse.FromString(reply).outputs["class_ids"])[0]
                elif name.startswith("rest"):
                    got = json.loads(reply)["outputs"]["class_ids"][0]
                else:
                    got = reply["class_ids"].numpy()[0]
                if int(got) != expected:
                    raise RuntimeError(f"{name} answered class {got}; the model says {expected}")
                for _ in range(20):
                    call()
            rounds = {}
            for _ in range(args.rounds):
                for concurrency in (1, 16):
                    for name, call in contenders.items():
                        cell = measure(call, concurrency, args.requests, args.seconds)
                        rounds.setdefault(f"{name}@{concurrency}", []).append(cell)
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=30)
    results = {key: median_cell(rows) for key, rows in rounds.items()}
    print(
        f"batch-1 predict, {args.seconds:g} s (at most {args.requests} requests) per cell, medians of {args.rounds} "
        "rounds, servers in subprocesses on loopback"
    )
    print(f"{'transport':<20} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for key, row in results.items():
        name, concurrency = key.split("@")
        print(f"{name:<20} {concurrency:>7} {row['per_second']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8}")

    def ratio(key, a, b):
        """The median over rounds of a's figure over b's in the same round."""
        return round(statistics.median(x[key] / y[key] for x, y in zip(rounds[a], rounds[b])), 3)

    summary = {
        "grpc_batched_over_unbatched_16": ratio("per_second", "grpc_batched@16", "grpc@16"),
        "grpc_batched_over_inprocess_16": ratio("per_second", "grpc_batched@16", "in_process@1"),
        "grpc_batched_linear_over_unbatched_16": ratio("per_second", "grpc_batched_linear@16", "grpc@16"),
        "rest_batched_over_unbatched_16": ratio("per_second", "rest_batched@16", "rest@16"),
        "grpc_batched_p99_over_unbatched_16": ratio("p99_ms", "grpc_batched@16", "grpc@16"),
        "grpc_batched_p50_over_unbatched_1": ratio("p50_ms", "grpc_batched@1", "grpc@1"),
        "rest_batched_p50_over_unbatched_1": ratio("p50_ms", "rest_batched@1", "rest@1"),
    }
    print(json.dumps({**summary, "cells": results}))


if __name__ == "__main__":
    main()
