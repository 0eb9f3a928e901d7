"""`nsladv serve` against what TF Serving's source says the real server does, on REST and gRPC.

Sources are cited as paths in github.com/tensorflow/serving (read at commit 9d981c5, July 2026).
"""

import base64
import concurrent.futures
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from serving_helpers import SHAPE
from serving_helpers import classifier
from serving_helpers import http_request
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from nsladv import export
from nsladv.serving import BatchingParameters
from nsladv.serving import GrpcClient
from nsladv.serving import RestClient
from nsladv.serving import Server
from nsladv.serving import ServingError
from nsladv.serving.metrics import MonitoringConfig
from nsladv.serving.metrics import read_monitoring_config

END = 50  # ModelVersionStatus.State


def digits(n, seed=0):
    """8-bit pixels in [0, 1], as PNG carries them."""
    return np.round(np.random.default_rng(seed).random((n, *SHAPE)) * 255).astype(np.float32) / 255


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conformance")
    export.export_model(classifier(1), folder, "digits", input_shape=SHAPE)
    export.export_model(classifier(2), folder, "digits", input_shape=SHAPE)
    export.export_model(classifier(3), folder, "letters", input_shape=SHAPE)
    return folder


def config_text(*entries):
    """A models.config; entries: (name, base_path, {label: version}, policy versions or None for latest)."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, path, labels, versions in entries:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(path), "tensorflow"
        if versions:
            entry.model_version_policy.specific.versions.extend(versions)
        for label, version in labels.items():
            entry.version_labels[label] = version
    return config


def write_config(path, *entries):
    partial = path.with_suffix(".partial")
    partial.write_text(text_format.MessageToString(config_text(*entries)))
    partial.replace(path)


def reload_config(server, config):
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_target))
    request = model_management_pb2.ReloadConfigRequest(config=config)
    try:
        return grpc.StatusCode.OK, stub.HandleReloadConfigRequest(request, timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details()


# 3. Binary inputs and outputs ---------------------------------------------------------------------------------


def test_bytes_signature_gives_serving_defaults_classes_over_rest_b64_and_grpc(base):
    """The export's `serving_bytes` signature decodes PNG in the graph (tf.io.decode_image) to the same [0, 1]
    pixels. REST reads `{"b64": ...}` for string inputs (util/json_tensor.cc, IsValBase64Object and
    JsonDecodeBase64Object); gRPC takes a DT_STRING TensorProto."""
    x = digits(6, seed=3)
    encoded = export.encode_png(x)
    with Server(base, rest_port=0, grpc_port=0, poll_seconds=None) as server:
        expected = GrpcClient(server.grpc_target).predict("digits", {"image": x})
        body = {
            "signature_name": "serving_bytes",
            "instances": [{"image_bytes": {"b64": base64.b64encode(e).decode()}} for e in encoded],
        }
        status, payload = http_request(server, "POST", "/v1/models/digits:predict", body)
        assert status == 200, payload
        np.testing.assert_array_equal([row["class_ids"] for row in payload["predictions"]], expected["class_ids"])
        np.testing.assert_allclose(
            [row["logits"] for row in payload["predictions"]], expected["logits"], rtol=1e-5, atol=1e-6
        )
        for client in (GrpcClient(server.grpc_target), RestClient(server.rest_url)):
            got = client.predict(
                "digits", {"image_bytes": np.asarray(encoded, dtype=object)}, signature_name="serving_bytes"
            )
            np.testing.assert_array_equal(got["class_ids"], expected["class_ids"])
        # A JPEG decodes too (lossy: only the shape is checked).
        jpeg = tf.io.encode_jpeg(tf.constant(np.uint8(x[0] * 255))).numpy()
        status, payload = http_request(
            server,
            "POST",
            "/v1/models/digits:predict",
            {"signature_name": "serving_bytes", "inputs": {"b64": base64.b64encode(jpeg).decode()}},
        )
        assert status == 400 and "must have shape (-1,)" in payload["error"]  # one image where a batch is due
        status, payload = http_request(
            server,
            "POST",
            "/v1/models/digits:predict",
            {"signature_name": "serving_bytes", "inputs": [{"b64": base64.b64encode(jpeg).decode()}]},
        )
        assert status == 200 and len(payload["outputs"]["class_ids"]) == 1


@pytest.mark.parametrize(
    "value, message",
    [
        ({"b64": "not base64!"}, "Unable to base64 decode"),
        ({"b64": base64.b64encode(b"not an image").decode()}, "Unknown image file format"),
        ({"b64": base64.b64encode(tf.io.encode_png(tf.zeros([5, 4, 1], tf.uint8)).numpy()).decode()}, "4x4 pixels"),
    ],
)
def test_bad_image_bytes_are_invalid_argument_on_both_apis(base, value, message):
    """Decoding errors are the op's INVALID_ARGUMENT, which TF Serving maps to HTTP 400
    (model_servers/http_server.cc, ToHTTPStatusCode) and passes on over gRPC."""
    with Server(base, rest_port=0, grpc_port=0, poll_seconds=None) as server:
        status, payload = http_request(
            server,
            "POST",
            "/v1/models/digits:predict",
            {"signature_name": "serving_bytes", "instances": [{"image_bytes": value}]},
        )
        assert status == 400 and message in payload["error"], payload
        if message != "Unable to base64 decode":
            with pytest.raises(ServingError) as error:
                GrpcClient(server.grpc_target).predict(
                    "digits",
                    {"image_bytes": np.asarray([base64.b64decode(value["b64"])], dtype=object)},
                    signature_name="serving_bytes",
                )
            assert error.value.code == "INVALID_ARGUMENT" and message in error.value.message


def test_string_outputs_named_bytes_come_back_as_b64(tmp_path):
    """A DT_STRING output whose name ends in `_bytes` is written as {"b64": ...}; other strings as text
    (util/json_tensor.cc, IsNamedTensorBytes with kBytesTensorNameSuffix)."""

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"echo": text, "echo_bytes": text}

    module = Echo()
    tf.saved_model.save(module, str(tmp_path / "echo" / "1"), signatures={"serving_default": module.serve})
    with Server(tmp_path, rest_port=0, grpc_port=0, poll_seconds=None) as server:
        raw = b"\x89PNG\xff"
        body = {"instances": [{"b64": base64.b64encode(raw).decode()}, "plain"]}
        status, payload = http_request(server, "POST", "/v1/models/echo:predict", body)
        assert status == 200, payload
        assert payload["predictions"][0]["echo_bytes"] == {"b64": base64.b64encode(raw).decode()}
        assert payload["predictions"][1] == {
            "echo": "plain",
            "echo_bytes": {"b64": base64.b64encode(b"plain").decode()},
        }
        for client in (GrpcClient(server.grpc_target), RestClient(server.rest_url)):
            got = client.predict("echo", {"text": np.asarray([raw], dtype=object)})
            assert got["echo_bytes"].tolist() == [raw]


# 4. Configuration and labels ---------------------------------------------------------------------------------


def test_a_config_file_is_read_strictly(base, tmp_path):
    """A base path that does not exist is an error (sources/storage_path/file_system_storage_path_source.cc:
    "Could not find base path ... for servable ..."), not a guess at a local folder; a relative one too
    (model_servers/server_core.cc, ValidateModelConfigList)."""
    write_config(tmp_path / "models.config", ("digits", "/models/digits", {}, None))
    with pytest.raises(ServingError, match=r"Could not find base path /models/digits for servable digits"):
        Server(config_file=tmp_path / "models.config", rest_port=0, grpc_port=0)
    write_config(tmp_path / "models.config", ("digits", "digits", {}, None))
    with pytest.raises(ServingError, match=r"to have an absolute path"):
        Server(config_file=tmp_path / "models.config", rest_port=0, grpc_port=0)
    # A folder's models.config (written for the container) is not read: the folder's models are served.
    shutil.copytree(base / "digits", tmp_path / "digits")
    write_config(tmp_path / "models.config", ("digits", "/models/digits", {}, None))
    with Server(tmp_path, rest_port=0, grpc_port=None, poll_seconds=None) as server:
        assert server.repository.names == ["digits"]


def test_labels_need_an_available_version_unless_allowed(base, tmp_path):
    """model_servers/server_core.cc, UpdateModelVersionLabelMap: a label may only name an AVAILABLE version
    ("Request to assign label to version N of model M, which is not currently available for inference",
    FAILED_PRECONDITION), so a config with labels fails at start unless
    --allow_version_labels_for_unavailable_models; that flag lets a new label wait for its version."""
    write_config(tmp_path / "models.config", ("digits", base / "digits", {"stable": 1, "canary": 2}, [1, 2]))
    with pytest.raises(ServingError, match=r"label to version \d of model digits, which is not currently available"):
        Server(config_file=tmp_path / "models.config", rest_port=0, grpc_port=0)
    with Server(
        config_file=tmp_path / "models.config",
        rest_port=0,
        grpc_port=0,
        poll_seconds=None,
        allow_version_labels_for_unavailable_models=True,
    ) as server:
        x = digits(2)
        for client in (RestClient(server.rest_url), GrpcClient(server.grpc_target)):
            stable = client.predict("digits", {"image": x}, label="stable")["logits"]
            canary = client.predict("digits", {"image": x}, label="canary")["logits"]
            np.testing.assert_allclose(stable, client.predict("digits", {"image": x}, version=1)["logits"])
            np.testing.assert_allclose(canary, client.predict("digits", {"image": x}, version=2)["logits"])
        # Even with the flag, an existing label cannot move to a version that is not loaded.
        code, details = reload_config(server, config_text(("digits", base / "digits", {"stable": 3}, [1, 2])))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "label to version 3" in details
        np.testing.assert_allclose(
            RestClient(server.rest_url).predict("digits", {"image": x}, label="stable")["logits"], stable
        )


def test_reload_config_adds_and_removes_models_while_clients_predict(base):
    """ModelService.HandleReloadConfigRequest (model_servers/model_service_impl.cc) swaps the model config list:
    new models load before it answers, removed ones unload; requests to a model that stays never fail."""
    with Server(config_file=None, path=base / "digits", rest_port=0, grpc_port=0, poll_seconds=None) as server:
        failures, served, stop = [], [0], threading.Event()

        def hammer(kind):
            client = RestClient(server.rest_url) if kind == "rest" else GrpcClient(server.grpc_target)
            while not stop.is_set():
                try:
                    client.predict("digits", {"image": digits(1)})
                    served[0] += 1
                except Exception as error:
                    failures.append(repr(error))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in ("rest", "grpc", "rest", "grpc")]
        for thread in threads:
            thread.start()
        try:
            both = config_text(("digits", base / "digits", {}, None), ("letters", base / "letters", {}, None))
            code, response = reload_config(server, both)
            assert code == grpc.StatusCode.OK and response.status.error_code == 0
            assert GrpcClient(server.grpc_target).predict("letters", {"image": digits(1)})["logits"].shape == (1, 3)
            code, response = reload_config(server, config_text(("digits", base / "digits", {}, None)))
            assert code == grpc.StatusCode.OK
            with pytest.raises(ServingError) as error:
                RestClient(server.rest_url).predict("letters", {"image": digits(1)})
            assert error.value.code == "NOT_FOUND"
            # The removed model's version is reported as END, as the servable state monitor keeps it.
            assert [
                (s.version, s.state) for s in GrpcClient(server.grpc_target).status("letters").model_version_status
            ] == [(1, END)]
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == [] and served[0] > 0


def test_reload_refuses_what_tf_serving_refuses_and_changes_nothing(base):
    """server_core.cc: only a ModelConfigList may replace a ModelConfigList; a name listed twice is refused
    ("Illegal to list model ... multiple times"); a refused config leaves the served models as they were."""
    with Server(base, rest_port=0, grpc_port=0, poll_seconds=None) as server:
        doubled = config_text(("digits", base / "digits", {}, None), ("digits", base / "letters", {}, None))
        code, details = reload_config(server, doubled)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "multiple times" in details
        code, details = reload_config(server, model_server_config_pb2.ModelServerConfig())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "Only ModelConfigList" in details
        assert server.repository.names == ["digits", "letters"]


def test_the_config_file_is_polled(base, tmp_path):
    """--model_config_file_poll_wait_seconds (model_servers/server.cc, PollFilesystemAndReloadConfig): the file
    is reread and reloaded; a file that does not parse is logged and the served models stay."""
    config = tmp_path / "models.config"
    write_config(config, ("digits", base / "digits", {}, None))
    with Server(config_file=config, rest_port=0, grpc_port=0, poll_seconds=None, config_poll_seconds=0.2) as server:
        write_config(config, ("digits", base / "digits", {}, None), ("letters", base / "letters", {}, None))
        deadline = time.time() + 30
        while "letters" not in server.repository.names and time.time() < deadline:
            time.sleep(0.1)
        assert RestClient(server.rest_url).predict("letters", {"image": digits(1)})["logits"].shape == (1, 3)
        config.write_text("model_config_list { config { name: ")
        time.sleep(0.6)
        assert server.repository.names == ["digits", "letters"]


# 5. Status and errors ----------------------------------------------------------------------------------------


def test_states_and_a_failed_load_are_reported_on_both_apis(tmp_path):
    """model_servers/get_model_status_impl.cc reports every version the servable state monitor knows, newest
    first: an unloaded one in END, one that failed to load in END with its error status; the model's other
    versions keep serving."""
    export.export_model(classifier(1), tmp_path, "digits", input_shape=SHAPE)
    with Server(tmp_path, rest_port=0, grpc_port=0, poll_seconds=None) as server:
        export.export_model(classifier(2), tmp_path, "digits", input_shape=SHAPE)
        server.repository.refresh()
        status, body = http_request(server, "GET", "/v1/models/digits")
        assert [(s["version"], s["state"]) for s in body["model_version_status"]] == [("2", "AVAILABLE"), ("1", "END")]
        broken = tmp_path / "digits" / "3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        server.repository.refresh()
        status, body = http_request(server, "GET", "/v1/models/digits/versions/3")
        assert status == 200
        (entry,) = body["model_version_status"]
        assert entry["state"] == "END" and entry["status"]["error_code"] != "OK"
        assert "Failed to load servable version 3 of digits" in entry["status"]["error_message"]
        grpc_entry = GrpcClient(server.grpc_target).status("digits", version=3).model_version_status[0]
        assert grpc_entry.state == END and grpc_entry.status.error_code != 0
        assert grpc_entry.status.error_message == entry["status"]["error_message"]
        assert RestClient(server.rest_url).predict("digits", {"image": digits(1)}) is not None  # version 2 serves
        with pytest.raises(ServingError) as error:
            GrpcClient(server.grpc_target).status("digits", version=9)
        assert error.value.code == "NOT_FOUND" and "Could not find version 9 of model digits" in error.value.message


def test_a_request_past_its_deadline_is_deadline_exceeded_504(base):
    """DEADLINE_EXCEEDED is HTTP 504 (http_server.cc, ToHTTPStatusCode); gRPC keeps the code, and the REST
    client maps 504 back to it. A request that waits in a batch queue past the timeout fails so."""
    slow = BatchingParameters(max_batch_size=8, batch_timeout_micros=3_000_000, num_batch_threads=1)
    with Server(base, rest_port=0, grpc_port=0, poll_seconds=None, batching=slow, request_timeout=0.3) as server:
        for client in (RestClient(server.rest_url), GrpcClient(server.grpc_target)):
            started = time.monotonic()
            with pytest.raises(ServingError) as error:
                client.predict("digits", {"image": digits(1)})
            assert error.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - started < 2.5
        assert server.metrics.count("digits", "DEADLINE_EXCEEDED") == 2


# 7. Metrics --------------------------------------------------------------------------------------------------


def test_prometheus_metrics_count_what_was_served(base, tmp_path):
    """util/prometheus_exporter.cc serves TF Serving's metrics with ':' for '/'; servables/tensorflow/util.cc
    counts every request as /tensorflow/serving/request_count{model_name, status} and times the successful
    ones as /tensorflow/serving/request_latency{model_name, API, entrypoint}. Only with a monitoring config
    (model_servers/http_server.cc, prometheus_config().enable())."""
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true, path: "/metrics/here" }\n')
    assert read_monitoring_config(tmp_path / "monitoring.config") == MonitoringConfig(True, "/metrics/here")
    with Server(base, rest_port=0, grpc_port=0, poll_seconds=None, monitoring=MonitoringConfig()) as server:
        rest_client, grpc_client = RestClient(server.rest_url), GrpcClient(server.grpc_target)
        for _ in range(3):
            rest_client.predict("digits", {"image": digits(1)})
        for _ in range(2):
            grpc_client.predict("digits", {"image": digits(1)})
        with pytest.raises(ServingError):
            grpc_client.predict("digits", {"image": digits(1)}, version=7, convert_dtypes=False)
        status, text = http_request(server, "GET", "/monitoring/prometheus/metrics")
        assert status == 200
        lines = set(text.splitlines())
        assert ':tensorflow:serving:request_count{model_name="digits",status="OK"} 5.0' in lines
        assert ':tensorflow:serving:request_count{model_name="digits",status="NOT_FOUND"} 1.0' in lines
        assert (
            ':tensorflow:serving:request_latency_count{API="predict",entrypoint="REST",model_name="digits"} 3.0'
            in lines
        )
        assert (
            ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",model_name="digits"} 2.0'
            in lines
        )
        # TF Serving's buckets (10 us * 1.8^k), cumulative, the last one counting every request
        rest_buckets = [
            line
            for line in text.splitlines()
            if line.startswith(':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="REST"')
        ]
        assert len(rest_buckets) == 33
        assert 'le="10.0"' in rest_buckets[0] and 'le="+Inf"' in rest_buckets[-1]
        assert rest_buckets[-1].endswith(" 3.0")
        counts = [float(line.rsplit(" ", 1)[1]) for line in rest_buckets]
        assert counts == sorted(counts) and counts[0] == 0.0
        per_version = (
            'nsladv_serving_requests_total{API="Predict",entrypoint="GRPC",model_name="digits",'
            'signature_name="serving_default",status="OK",version="2"} 2.0'
        )
        assert per_version in lines
    with Server(base, rest_port=0, grpc_port=None, poll_seconds=None) as server:
        status, _ = http_request(server, "GET", "/monitoring/prometheus/metrics")
        assert status != 200  # no monitoring config, no metrics
        assert server.metrics.count("digits") == 0


# 6. Batching, with the bytes signature -----------------------------------------------------------------------


def test_bytes_requests_are_batched_too(base):
    """--enable_batching batches any signature (batching/batching_session.cc): concurrent PNG requests land in
    fewer calls than requests, and each caller gets its own classes."""
    parameters = BatchingParameters(max_batch_size=32, batch_timeout_micros=200_000, num_batch_threads=1)
    x = digits(12, seed=7)
    with Server(base, rest_port=0, grpc_port=0, poll_seconds=None, batching=parameters) as server:
        client = GrpcClient(server.grpc_target)
        expected = client.predict("digits", {"image": x})["class_ids"]
        before = server.batcher.calls
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            got = list(
                pool.map(
                    lambda e: client.predict(
                        "digits", {"image_bytes": np.asarray([e], dtype=object)}, signature_name="serving_bytes"
                    )["class_ids"][0],
                    export.encode_png(x),
                )
            )
        assert server.batcher.calls - before < 6
        np.testing.assert_array_equal(got, expected)


def test_grpc_raw_stub_with_a_double_tensor_is_refused(base):
    """TensorFlow's argument check, as TF Serving runs it: "Expects arg[0] to be float but double is provided"."""
    with Server(base, rest_port=None, grpc_port=0, poll_seconds=None) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(digits(1).astype(np.float64)))
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Expects arg[0] to be float but double is provided" in error.value.details()


@pytest.mark.parametrize("tensor_content", [False, True])
def test_grpc_outputs_are_serialized_as_tf_serving_serializes_them(base, tensor_content):
    """servables/tensorflow/predict_util.cc: outputs are written with Tensor::AsProtoField (values in float_val,
    int64_val, ...) unless model_servers/server.cc's --enable_serialization_as_tensor_content asks for
    AsProtoTensorContent (raw bytes). Clients that read only one of the two break on the other."""
    x = digits(2, seed=3)
    with Server(
        base, rest_port=None, grpc_port=0, poll_seconds=None, serialization_as_tensor_content=tensor_content
    ) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(x))
        outputs = stub.Predict(request, timeout=30).outputs
        expected = GrpcClient(server.grpc_target).predict("digits", {"image": x})
    logits, class_ids = outputs["logits"], outputs["class_ids"]
    assert [d.size for d in logits.tensor_shape.dim] == [2, 3]
    if tensor_content:
        assert len(logits.tensor_content) == 2 * 3 * 4 and not logits.float_val
        assert len(class_ids.tensor_content) == 2 * 8 and not class_ids.int64_val
    else:
        assert len(logits.float_val) == 6 and not logits.tensor_content
        assert len(class_ids.int64_val) == 2 and not class_ids.tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(logits), expected["logits"])
    np.testing.assert_array_equal(tf.make_ndarray(class_ids), expected["class_ids"])
