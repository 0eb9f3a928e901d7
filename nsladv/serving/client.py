"""Clients for TF Serving's REST and gRPC APIs (this server's or a real TF Serving's)."""

import base64
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from nsladv.serving.errors import HTTP_STATUS
from nsladv.serving.errors import ServingError
from nsladv.serving.rest import is_b64

# REST errors carry only the HTTP status: where several codes share one, the most common is named.
_PREFERRED = ("INVALID_ARGUMENT", "INTERNAL", "ABORTED")
_CODE_OF_HTTP = {}
for _code in (*_PREFERRED, *HTTP_STATUS):
    _CODE_OF_HTTP.setdefault(HTTP_STATUS[_code], _code)


def _model_path(name, version=None, label=None):
    path = f"/v1/models/{name}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{label}"
    return path


def _json_ready(value):
    """An input as JSON: numbers as lists, bytes as TF Serving's {"b64": ...} objects."""
    array = np.asarray(value)
    if array.dtype.kind not in ("O", "S"):
        return array.tolist()

    def encode(item):
        if isinstance(item, bytes):
            return {"b64": base64.b64encode(item).decode()}
        return item

    return np.vectorize(encode, otypes=[object])(array).tolist()


def _array(value):
    """A JSON output as an array; {"b64": ...} objects become bytes."""

    def decode(item):
        if isinstance(item, list):
            return [decode(i) for i in item]
        return base64.b64decode(item["b64"]) if is_b64(item) else item

    decoded = decode(value)
    return np.asarray(decoded, dtype=object) if _contains_bytes(decoded) else np.asarray(decoded)


def _contains_bytes(value):
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, bytes)


class RestClient:
    """TF Serving's REST API.

    Example:

    ```python
    client = RestClient("http://127.0.0.1:8501")
    client.predict("mnist", {"image": images})["class_ids"]
    ```
    """

    def __init__(self, url="http://127.0.0.1:8501", *, timeout=30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except ValueError:
                message = error.reason
            raise ServingError(_CODE_OF_HTTP.get(error.code, "INTERNAL"), message) from None

    def predict(self, name, inputs, *, version=None, label=None, signature_name=None, row_format=False):
        """{output name: np.ndarray} for `inputs` ({input name: array}, batch first).

        Bytes (an array of `bytes`, such as encoded images for `serving_bytes`)
        go as `{"b64": ...}`; outputs written so come back as bytes.
        """
        inputs = {k: _json_ready(v) for k, v in inputs.items()}
        body = {"signature_name": signature_name} if signature_name else {}
        if row_format:
            batch = len(next(iter(inputs.values())))
            body["instances"] = [{k: v[i] for k, v in inputs.items()} for i in range(batch)]
            rows = self._call(_model_path(name, version, label) + ":predict", body)["predictions"]
            if rows and isinstance(rows[0], dict) and not is_b64(rows[0]):
                return {k: _array([row[k] for row in rows]) for k in rows[0]}
            return {"outputs": _array(rows)}
        body["inputs"] = inputs
        outputs = self._call(_model_path(name, version, label) + ":predict", body)["outputs"]
        if isinstance(outputs, dict) and not is_b64(outputs):
            return {k: _array(v) for k, v in outputs.items()}
        return {"outputs": _array(outputs)}

    def status(self, name, *, version=None, label=None):
        return self._call(_model_path(name, version, label))

    def metadata(self, name, *, version=None, label=None):
        return self._call(_model_path(name, version, label) + "/metadata")


class GrpcClient:
    """TF Serving's gRPC API through the `tensorflow-serving-api` stubs."""

    def __init__(self, target="127.0.0.1:8500", *, timeout=30.0, max_message_bytes=64 * 1024 * 1024):
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.timeout = timeout
        self._dtypes = {}

    @staticmethod
    def _spec(spec, name, version, label):
        spec.name = name
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code().name
            raise ServingError(code if code in HTTP_STATUS else "INTERNAL", error.details()) from None

    def predict(self, name, inputs, *, version=None, label=None, signature_name="serving_default", convert_dtypes=True):
        """{output name: np.ndarray} for `inputs` ({input name: array}, batch first).

        TF Serving refuses a tensor whose dtype is not the signature's (a
        float64 array for a float32 input); with `convert_dtypes` the client
        reads the signature's dtypes once (GetModelMetadata) and converts.
        """
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = signature_name
        dtypes = self._input_dtypes(name, version, label, signature_name) if convert_dtypes else {}
        for key, value in inputs.items():
            array = np.asarray(value)
            if key in dtypes and array.dtype != dtypes[key]:
                array = array.astype(dtypes[key])
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        response = self._call(self.prediction.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def _input_dtypes(self, name, version, label, signature_name):
        key = (name, version, label, signature_name)
        if key not in self._dtypes:
            signatures = self.metadata(name, version=version, label=label).signature_def
            found = signatures.get(signature_name)
            if found is None:
                return {}  # The server says what is wrong with the name when asked to predict.
            self._dtypes[key] = {k: tf.as_dtype(v.dtype).as_numpy_dtype for k, v in found.inputs.items()}
        return self._dtypes[key]

    def status(self, name, *, version=None, label=None):
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, name, version, label)
        return self._call(self.models.GetModelStatus, request)

    def metadata(self, name, *, version=None, label=None):
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec, name, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map

    def close(self):
        self.channel.close()
