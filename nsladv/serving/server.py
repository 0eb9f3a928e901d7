"""Runs the REST and gRPC servers over one repository, polling for new versions and config changes."""

import concurrent.futures
import gc
import threading

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from nsladv.serving.batching import Batcher
from nsladv.serving.batching import BatchingParameters
from nsladv.serving.batching import read_batching_parameters
from nsladv.serving.grpc_service import ModelService
from nsladv.serving.grpc_service import PredictionService
from nsladv.serving.metrics import Metrics
from nsladv.serving.metrics import MonitoringConfig
from nsladv.serving.metrics import read_monitoring_config
from nsladv.serving.repository import ModelRepository
from nsladv.serving.rest import RestServer

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


class Server:
    """TF Serving's REST (default 8501) and gRPC (default 8500) APIs, on loopback.

    Args:
        path: a folder of model folders (`saved_models/`) or one model folder;
            every model found is served (latest version). Its models.config
            is not read: give it as `config_file`.
        config_file: a TF Serving model config file (`--model_config_file`),
            read strictly: base paths as written, labels only on loaded versions.
        config: a `ModelServerConfig` instead, e.g. TF Serving's
            `--model_name`/`--model_base_path` as `single_model_config`.
        host: the address to bind (loopback unless told otherwise).
        rest_port, grpc_port: ports (0 picks a free one; None disables that API).
        poll_seconds: how often to look for new versions (None: never), as
            `--file_system_poll_wait_seconds`.
        config_poll_seconds: how often to reread `config_file` (None: never),
            as `--model_config_file_poll_wait_seconds`.
        allow_version_labels_for_unavailable_models: as TF Serving's flag.
        max_body_bytes: largest request accepted.
        workers: gRPC worker threads.
        batching: `BatchingParameters` (or a TF Serving batching parameters
            file) to batch concurrent predict requests, as TF Serving's
            `--enable_batching`; None serves each request on its own.
        monitoring: a `MonitoringConfig` (or a TF Serving monitoring config
            file) to serve Prometheus metrics over REST; None serves none.
            Requests are counted either way (`server.metrics`).
        request_timeout: seconds a request may wait for the model before it
            fails with DEADLINE_EXCEEDED (TF Serving's
            `--rest_api_timeout_in_ms` defaults to 30 s); gRPC clients'
            deadlines apply too.
        serialization_as_tensor_content: write gRPC output tensors as raw
            bytes in `tensor_content`, as TF Serving's
            `--enable_serialization_as_tensor_content`; by default they go in
            the dtype's repeated field (`float_val`, ...), as TF Serving's do.
        freeze_heap: once the models are loaded, move every object the process
            has out of the garbage collector's sight (`gc.freeze`), and again
            after each version change (after a full collection, so that an
            unloaded version is freed); `stop()` thaws them. A full collection
            otherwise walks everything TensorFlow and the models made, with the
            interpreter lock held, while every request in flight waits (the
            pauses measured are in docs/results.md). Process-wide, so off by
            default; `nsladv serve` turns it on.

    Example:

    ```python
    with Server("saved_models", rest_port=0, grpc_port=0) as server:
        print(server.rest_url, server.grpc_target)
    ```
    """

    def __init__(
        self,
        path=None,
        *,
        config_file=None,
        config=None,
        host="127.0.0.1",
        rest_port=8501,
        grpc_port=8500,
        poll_seconds=2.0,
        config_poll_seconds=None,
        allow_version_labels_for_unavailable_models=False,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        workers=16,
        verbose=False,
        batching=None,
        monitoring=None,
        request_timeout=30.0,
        serialization_as_tensor_content=False,
        freeze_heap=False,
    ):
        if monitoring is not None and not isinstance(monitoring, MonitoringConfig):
            monitoring = read_monitoring_config(monitoring)
        if not (isinstance(request_timeout, (int, float)) and request_timeout > 0):
            raise ValueError(f"`request_timeout` must be a positive number of seconds. Received: {request_timeout!r}")
        self.freeze_heap = freeze_heap
        self._frozen = False
        self._freezing = threading.Lock()
        self.repository = ModelRepository(
            path,
            config_file=config_file,
            config=config,
            allow_version_labels_for_unavailable_models=allow_version_labels_for_unavailable_models,
            on_change=self._refreeze,
        )
        self.metrics = Metrics()
        self.monitoring = monitoring
        self.config_poll_seconds = config_poll_seconds
        if batching is not None and not isinstance(batching, BatchingParameters):
            batching = read_batching_parameters(batching)
        self.batcher = None if batching is None else Batcher(batching)
        self.host = host
        self.poll_seconds = poll_seconds
        self._rest = None
        self._grpc = None
        if rest_port is not None:
            self._rest = RestServer(
                (host, rest_port),
                self.repository,
                max_body_bytes=max_body_bytes,
                verbose=verbose,
                batcher=self.batcher,
                metrics=self.metrics,
                monitoring=monitoring,
                request_timeout=request_timeout,
            )
        if grpc_port is not None:
            self._grpc = grpc.server(
                concurrent.futures.ThreadPoolExecutor(max_workers=workers),
                options=[
                    ("grpc.max_receive_message_length", max_body_bytes),
                    ("grpc.max_send_message_length", max_body_bytes),
                ],
            )
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                PredictionService(
                    self.repository,
                    self.batcher,
                    self.metrics,
                    request_timeout,
                    tensor_content=serialization_as_tensor_content,
                ),
                self._grpc,
            )
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.repository), self._grpc)
            self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
            if self.grpc_port == 0:
                raise OSError(f"Could not bind gRPC to {host}:{grpc_port}")
        self._rest_thread = None

    @property
    def rest_url(self):
        return None if self._rest is None else f"http://{self.host}:{self._rest.server_address[1]}"

    @property
    def grpc_target(self):
        return None if self._grpc is None else f"{self.host}:{self.grpc_port}"

    def start(self):
        if self.freeze_heap:
            with self._freezing:
                self._frozen = True
            self._refreeze()
        if self._rest is not None:
            self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="nsladv-rest", daemon=True)
            self._rest_thread.start()
        if self._grpc is not None:
            self._grpc.start()
        self.repository.start_polling(self.poll_seconds, config_seconds=self.config_poll_seconds)
        return self

    def stop(self):
        self.repository.stop()
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()
        if self.batcher is not None:
            self.batcher.close()
        with self._freezing:
            if self._frozen:
                gc.unfreeze()
                self._frozen = False

    def _refreeze(self):
        """At start and after a version change: thaw, collect (garbage, an unloaded version), freeze what is left."""
        with self._freezing:
            if self._frozen:
                gc.unfreeze()
                gc.collect()
                gc.freeze()

    def wait(self):
        """Blocks until interrupted."""
        import time

        while True:
            time.sleep(3600)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
