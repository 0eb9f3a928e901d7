"""The local TF Serving API: real gRPC stubs and plain HTTP against the in-process model."""

import concurrent.futures
import gc
import json
import shutil
import threading
import time
import weakref

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from serving_helpers import SHAPE
from serving_helpers import classifier
from serving_helpers import http_request
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from nsladv import export
from nsladv.serving import GrpcClient
from nsladv.serving import RestClient
from nsladv.serving import Server
from nsladv.serving import ServingError


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    first, second = classifier(1), classifier(2)
    export.export_model(first, base, "digits", input_shape=SHAPE)
    export.export_model(second, base, "digits", input_shape=SHAPE, warmup_inputs=images(2, 9))
    (base / "digits" / ".partial-3-1").mkdir()  # an export in progress: ignored
    return base, {1: first, 2: second}


@pytest.fixture(scope="module")
def server(models):
    with Server(models[0], rest_port=0, grpc_port=0, poll_seconds=None, max_body_bytes=200_000) as running:
        yield running


def test_rest_and_grpc_predictions_equal_the_model(server, models):
    x = images(5)
    expected = models[1][2].predict(x, verbose=0)
    rest = RestClient(server.rest_url).predict("digits", {"image": x})
    rows = RestClient(server.rest_url).predict("digits", {"image": x}, row_format=True)
    stub = GrpcClient(server.grpc_target).predict("digits", {"image": x})
    for outputs in (rest, rows, stub):
        np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(outputs["class_ids"], np.argmax(expected, axis=1))
    np.testing.assert_allclose(stub["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_plain_http_row_and_columnar_formats(server, models):
    x = images(2, 3)
    expected = models[1][2].predict(x, verbose=0)
    status, body = http_request(server, "POST", "/v1/models/digits:predict", json.dumps({"instances": x.tolist()}))
    assert status == 200 and len(body["predictions"]) == 2
    assert sorted(body["predictions"][0]) == ["class_ids", "logits", "probabilities"]
    np.testing.assert_allclose(body["predictions"][1]["logits"], expected[1], rtol=1e-5, atol=1e-6)
    named = json.dumps({"signature_name": "serving_default", "instances": [{"image": r} for r in x.tolist()]})
    status, body = http_request(server, "POST", "/v1/models/digits/versions/2:predict", named)
    np.testing.assert_allclose(body["predictions"][0]["logits"], expected[0], rtol=1e-5, atol=1e-6)
    # TF Serving's default policy serves the latest version only.
    status, body = http_request(server, "POST", "/v1/models/digits/versions/1:predict", named)
    assert status == 404 and "Specific(digits, 1)" in body["error"]
    status, body = http_request(
        server, "POST", "/v1/models/digits:predict", json.dumps({"inputs": {"image": x.tolist()}})
    )
    assert status == 200 and sorted(body["outputs"]) == ["class_ids", "logits", "probabilities"]
    np.testing.assert_allclose(body["outputs"]["logits"], expected, rtol=1e-5, atol=1e-6)


def test_real_grpc_stub(server, models):
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.version.value = 2
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images(3)))
    request.output_filter.append("class_ids")
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["class_ids"] and response.model_spec.version.value == 2
    np.testing.assert_array_equal(
        tf.make_ndarray(response.outputs["class_ids"]), np.argmax(models[1][2].predict(images(3), verbose=0), axis=1)
    )
    channel.close()


def test_status_and_metadata(server):
    status, body = http_request(server, "GET", "/v1/models/digits")
    assert status == 200 and body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    status, body = http_request(server, "GET", "/v1/models/digits/metadata")
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert body["model_spec"]["version"] == "2" and list(signature["inputs"]) == ["image"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    grpc_status = GrpcClient(server.grpc_target).status("digits")
    assert [(s.version, s.state) for s in grpc_status.model_version_status] == [(2, 30)]  # 30: AVAILABLE
    signatures = GrpcClient(server.grpc_target).metadata("digits")
    assert (
        isinstance(signatures, get_model_metadata_pb2.SignatureDefMap) and "serving_default" in signatures.signature_def
    )


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v1/models/digits:predict", "{not json", 400, "not valid JSON"),
        (
            "POST",
            "/v1/models/digits:predict",
            json.dumps({"inputs": {"pixels": [[0.0]]}}),
            400,
            "The signature takes inputs ['image']",
        ),
        (
            "POST",
            "/v1/models/digits:predict",
            json.dumps({"instances": [[[0.1] * 4] * 4]}),
            400,
            "must have shape (-1, 4, 4, 1)",
        ),
        (
            "POST",
            "/v1/models/digits:predict",
            json.dumps({"instances": [[["a"]]]}),
            400,
            "rectangular array of float32",
        ),
        (
            "POST",
            "/v1/models/digits:predict",
            json.dumps({"instances": [], "inputs": []}),
            400,
            "exactly one of 'instances'",
        ),
        (
            "POST",
            "/v1/models/nope:predict",
            json.dumps({"instances": [[0]]}),
            404,
            "Servable not found for request: Latest(nope)",
        ),
        ("POST", "/v1/models/digits/versions/7:predict", json.dumps({"instances": [[0]]}), 404, "Specific(digits, 7)"),
        (
            "POST",
            "/v1/models/digits/labels/stable:predict",
            json.dumps({"instances": [[0]]}),
            400,
            "Unrecognized servable version label: stable",
        ),
        (
            "POST",
            "/v1/models/digits:predict",
            json.dumps({"signature_name": "x", "instances": [[0]]}),
            400,
            'Serving signature key "x" not found',
        ),
        ("GET", "/v1/models/digits/versions/3", None, 404, "Could not find version 3 of model digits"),
        ("GET", "/v2/whatever", None, 400, "Malformed request"),
        (
            "POST",
            "/v1/models/digits:predict",
            json.dumps({"instances": [[[[0.0]] * 4] * 4] * 2000}),
            429,
            "takes at most 200000",
        ),
    ],
)
def test_rest_errors_and_the_server_keeps_serving(server, method, path, body, status, message):
    got_status, payload = http_request(server, method, path, body, {"Content-Type": "application/json"})
    assert got_status == status and message in payload["error"], payload
    assert RestClient(server.rest_url).predict("digits", {"image": images(1)})["logits"].shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs, code, message",
    [
        ({"name": "nope", "inputs": {"image": images(1)}}, "NOT_FOUND", "Latest(nope)"),
        (
            {"name": "digits", "inputs": {"image": images(1).astype("float64")[:, :, :2]}},
            "INVALID_ARGUMENT",
            "must have shape",
        ),
        ({"name": "digits", "inputs": {"image": images(1)}, "version": 5}, "NOT_FOUND", "Specific(digits, 5)"),
        (
            {"name": "digits", "inputs": {"image": images(1)}, "signature_name": "nope"},
            "FAILED_PRECONDITION",
            "not found",
        ),
        (
            {"name": "digits", "inputs": {"image": images(1).astype("float64")}, "convert_dtypes": False},
            "INVALID_ARGUMENT",
            "Expects arg[0] to be float but double is provided",
        ),
    ],
)
def test_grpc_errors(server, kwargs, code, message):
    with pytest.raises(ServingError) as error:
        GrpcClient(server.grpc_target).predict(**kwargs)
    assert error.value.code == code and message in error.value.message


def test_warmup_records_replay_against_the_server(server, models):
    path = models[0] / "digits" / "2" / "assets.extra" / "tf_serving_warmup_requests"
    client = GrpcClient(server.grpc_target)
    records = list(tf.data.TFRecordDataset(str(path)))
    assert len(records) == 2
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        response = client.prediction.Predict(request, timeout=30)
        x = tf.make_ndarray(request.inputs["image"])
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["logits"]), models[1][2].predict(x, verbose=0), rtol=1e-5, atol=1e-6
        )


def test_models_config_policy_and_labels(tmp_path, models):
    shutil.copytree(models[0] / "digits", tmp_path / "digits")
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = "digits", str(tmp_path / "digits"), "tensorflow"
    entry.model_version_policy.all.SetInParent()
    entry.version_labels["stable"] = 1
    entry.version_labels["canary"] = 2
    (tmp_path / "models.config").write_text(text_format.MessageToString(config))
    with Server(
        config_file=tmp_path / "models.config",
        rest_port=0,
        grpc_port=None,
        poll_seconds=None,
        allow_version_labels_for_unavailable_models=True,  # labels in the first config need it, as in TF Serving
    ) as local:
        client = RestClient(local.rest_url)
        assert [s["version"] for s in client.status("digits")["model_version_status"]] == ["2", "1"]
        x = images(2)
        np.testing.assert_allclose(
            client.predict("digits", {"image": x}, label="stable")["logits"],
            models[1][1].predict(x, verbose=0),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            client.predict("digits", {"image": x}, label="canary")["logits"],
            models[1][2].predict(x, verbose=0),
            rtol=1e-5,
            atol=1e-6,
        )


def test_a_new_version_lands_under_load_without_failed_requests(tmp_path):
    export.export_model(classifier(1), tmp_path, "digits", input_shape=SHAPE)
    with Server(tmp_path, rest_port=0, grpc_port=0, poll_seconds=0.2) as local:
        failures, versions, stop = [], set(), threading.Event()

        def hammer(kind):
            client = RestClient(local.rest_url) if kind == "rest" else GrpcClient(local.grpc_target)
            deadline = time.time() + 60
            while not stop.is_set() and time.time() < deadline:
                try:
                    client.predict("digits", {"image": images(2)})
                    status = client.status("digits")
                    versions.add(
                        status["model_version_status"][0]["version"]
                        if kind == "rest"
                        else str(status.model_version_status[0].version)
                    )
                except Exception as error:
                    failures.append(repr(error))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in ("rest", "grpc", "rest", "grpc")]
        for t in threads:
            t.start()
        time.sleep(0.5)
        export.export_model(classifier(2), tmp_path, "digits", input_shape=SHAPE)
        deadline = time.time() + 30
        while "2" not in versions and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert failures == [] and {"1", "2"} <= versions


def test_a_frozen_heap_keeps_collections_short_and_lets_an_unloaded_version_go(tmp_path):
    """`freeze_heap` (what `nsladv serve` runs with) takes what is loaded out of the collector's sight.

    A full collection walks every object TensorFlow and the models made: on the
    MNIST server it held the GIL about 220 ms, every half second under 16 REST
    clients (8% of requests over 200 ms). Frozen, a collection walks only what
    the requests made. A version change thaws, collects and freezes again, so an
    unloaded version's objects (cycles among them) are freed, not frozen for
    good; stopping thaws everything.
    """
    export.export_model(classifier(1), tmp_path, "digits", input_shape=SHAPE)
    assert gc.get_freeze_count() == 0
    with Server(tmp_path, rest_port=0, grpc_port=0, poll_seconds=None, freeze_heap=True) as local:
        assert gc.get_freeze_count() > 10 * len(gc.get_objects())  # a collection walks a small part
        # The signature's graph sits in reference cycles: only a collection frees it, never a frozen one.
        first = weakref.ref(local.repository.resolve("digits").loaded.signatures["serving_default"].graph)
        assert "class_ids" in RestClient(local.rest_url).predict("digits", {"image": images(2)})
        export.export_model(classifier(2), tmp_path, "digits", input_shape=SHAPE)
        local.repository.refresh()  # version 2 loads, version 1 unloads
        assert local.repository.resolve("digits").version == 2
        assert first() is None  # collected, not frozen
        assert gc.get_freeze_count() > 10 * len(gc.get_objects())  # frozen again, version 2 with the rest
    assert gc.get_freeze_count() == 0


def test_binds_loopback_by_default(models):
    with Server(models[0], rest_port=0, grpc_port=0, poll_seconds=None) as local:
        assert local.rest_url.startswith("http://127.0.0.1:") and local.grpc_target.startswith("127.0.0.1:")


def test_no_models():
    with pytest.raises(FileNotFoundError, match=r"No saved models at /nonexistent"):
        Server("/nonexistent", rest_port=0, grpc_port=0)


def test_grpc_client_sends_the_signatures_dtype(server, models):
    """TF Serving refuses a DT_DOUBLE tensor for a float32 input (TensorFlow's argument check:
    "Expects arg[0] to be float but double is provided"); the client converts to the signature's dtype."""
    x = images(3).astype("float64")
    outputs = GrpcClient(server.grpc_target).predict("digits", {"image": x})
    np.testing.assert_allclose(outputs["logits"], models[1][2].predict(x.astype("float32"), verbose=0), rtol=1e-5)


def test_rest_converts_json_numbers_to_the_signatures_dtype(server, models):
    """TF Serving's REST API parses JSON numbers into the signature's dtype (json_tensor.cc)."""
    x = images(2, 5)
    body = json.dumps({"inputs": {"image": x.astype("float64").tolist()}})
    status, payload = http_request(server, "POST", "/v1/models/digits:predict", body)
    assert status == 200
    np.testing.assert_allclose(payload["outputs"]["logits"], models[1][2].predict(x, verbose=0), rtol=1e-5)


def test_nan_and_infinity_pass_through_both_apis(tmp_path):
    """TF Serving's REST API reads and writes NaN, Infinity and -Infinity (json_tensor.cc), and neither API
    checks values for finiteness: the model computes on them and its outputs come back as they are."""
    inputs = keras.Input(SHAPE)
    linear = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))  # NaN in, NaN out
    export.export_model(linear, tmp_path, "linear", input_shape=SHAPE)
    special = [[[float("nan")], [float("inf")], [float("-inf")], [0.5]]] + [[[0.5]] * 4] * 3
    body = json.dumps({"instances": [special]})
    assert "NaN" in body and "-Infinity" in body
    with Server(tmp_path, rest_port=0, grpc_port=0, poll_seconds=None) as running:
        status, payload = http_request(running, "POST", "/v1/models/linear:predict", body)
        assert status == 200, payload
        assert np.isnan(np.asarray(payload["predictions"][0]["logits"], "float64")).all()
        outputs = GrpcClient(running.grpc_target).predict("linear", {"image": np.asarray([special], "float32")})
        assert np.isnan(outputs["logits"]).all()


def test_status_codes_keep_their_meaning_over_http():
    """TF Serving maps DEADLINE_EXCEEDED to HTTP 504 and CANCELLED to 499; the REST client maps them back."""
    from nsladv.serving import client

    assert ServingError("DEADLINE_EXCEEDED", "slow").http_status == 504
    assert ServingError("CANCELLED", "gone").http_status == 499
    assert client._CODE_OF_HTTP[504] == "DEADLINE_EXCEEDED" and client._CODE_OF_HTTP[499] == "CANCELLED"


def test_concurrent_requests_run_as_one_batch_and_each_gets_its_rows(models):
    """TF Serving's --enable_batching: concurrent requests to one model and signature are batched into one
    session run (tensorflow_serving/batching/batching_session.cc); each caller gets its own rows back."""
    from nsladv.serving import BatchingParameters

    parameters = BatchingParameters(max_batch_size=64, batch_timeout_micros=200_000, num_batch_threads=1)
    inputs = [images(1 + i % 3, seed=i) for i in range(16)]
    with Server(models[0], rest_port=0, grpc_port=0, poll_seconds=None, batching=parameters) as running:
        for client in (GrpcClient(running.grpc_target), RestClient(running.rest_url)):
            before = running.batcher.calls
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                results = list(pool.map(lambda x, c=client: c.predict("digits", {"image": x}), inputs))
            assert running.batcher.calls - before < len(inputs) / 2  # 16 requests, a few calls
            for x, outputs in zip(inputs, results):
                np.testing.assert_allclose(outputs["logits"], models[1][2].predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_batching_refuses_a_request_larger_than_a_batch(models):
    """TF Serving's batch scheduler: "Task size N is larger than maximum batch size M" (INVALID_ARGUMENT)."""
    from nsladv.serving import BatchingParameters

    with Server(
        models[0], rest_port=0, grpc_port=0, poll_seconds=None, batching=BatchingParameters(max_batch_size=4)
    ) as running:
        with pytest.raises(ServingError) as error:
            GrpcClient(running.grpc_target).predict("digits", {"image": images(5)})
        assert error.value.code == "INVALID_ARGUMENT" and "Task size 5 is larger than maximum batch size 4" in str(
            error.value
        )
        assert RestClient(running.rest_url).predict("digits", {"image": images(4)})["logits"].shape == (4, 3)


def test_batching_parameters_file(tmp_path):
    from nsladv.serving.batching import read_batching_parameters

    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }  # half a millisecond\n"
        "num_batch_threads { value: 2 }\npad_variable_length_inputs: true\n"
    )
    parameters = read_batching_parameters(path)
    assert (parameters.max_batch_size, parameters.batch_timeout_micros, parameters.num_batch_threads) == (16, 500, 2)
    path.write_text("max_batch_sise { value: 16 }\n")
    with pytest.raises(ValueError, match=r"Unknown batching parameter 'max_batch_sise'"):
        read_batching_parameters(path)
