"""TF Serving's REST API over a `ModelRepository` (a threaded HTTP server).

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signatures
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    predictions

Predict takes the row format (`instances`, answered with `predictions`) or
the columnar format (`inputs`, answered with `outputs`), and
`signature_name`. As TF Serving's json_tensor.cc: a string input takes JSON
strings or `{"b64": "..."}` objects (base64, for binary data such as encoded
images); a string output whose name ends in `_bytes` is written as
`{"b64": "..."}`, other string outputs as text; NaN, Infinity and -Infinity
are read and written. Errors are `{"error": "..."}` with TF Serving's HTTP
codes. With a monitoring config, GET on its path (by default
/monitoring/prometheus/metrics) answers with the metrics.
"""

import base64
import binascii
import http.server
import json
import re
import socket
import time

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from nsladv._extras import require
from nsladv.serving import predict as predict_lib
from nsladv.serving.errors import ServingError
from nsladv.serving.repository import DEFAULT_SIGNATURE

prometheus_client = require("prometheus_client", "serve")

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?$"
)


def _parse_path(path):
    match = _PATH.match(path.split("?", 1)[0])
    if not match:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Malformed request: {path}. Expected /v1/models/<name>[/versions/<v>|/labels/<l>][/metadata|:predict]",
        )
    return match.groupdict()


def status_json(repository, name, version, label):
    """GetModelStatus as JSON. As TF Serving's GetModelStatusImpl, a label does not narrow the list."""
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": status.state,
                "status": {"error_code": status.error_code, "error_message": status.error_message},
            }
            for v, status in repository.status(name, version)
        ]
    }


def metadata_json(repository, name, version, label):
    loaded = repository.resolve(name, version, label)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in loaded.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
        "metadata": {"signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)},
    }


def predict_json(repository, name, version, label, body, batcher=None, *, info=None, deadline=None):
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServingError("INVALID_ARGUMENT", f"The body is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise ServingError("INVALID_ARGUMENT", f"The body must be a JSON object. Received: {type(request).__name__}")
    if ("instances" in request) == ("inputs" in request):
        raise ServingError(
            "INVALID_ARGUMENT",
            "The body must have exactly one of 'instances' (row format) or 'inputs' (columnar format). "
            f"Received keys: {sorted(request)}",
        )
    loaded = repository.resolve(name, version, label)
    signature_name = request.get("signature_name") or DEFAULT_SIGNATURE
    signature, _ = loaded.signature(signature_name)
    if info is not None:
        info.update(version=loaded.version, signature_name=signature_name)
    specs = predict_lib.input_specs(signature)
    names = sorted(specs)
    batching = {"batcher": batcher, "key": (loaded.name, loaded.version, signature_name), "deadline": deadline}
    if "instances" in request:
        inputs = _rows_to_columns(request["instances"], names)
    else:
        inputs = request["inputs"]
        if not isinstance(inputs, dict) or is_b64(inputs):  # A tensor is a list or a number; an object names inputs.
            if len(names) != 1:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                    f"as per tensorinfo_map: {names}",
                )
            inputs = {names[0]: inputs}
    inputs = {k: _decode_strings(v, k) if k in specs and specs[k].dtype == tf.string else v for k, v in inputs.items()}
    outputs = predict_lib.run(signature, inputs, **batching)
    outputs = {k: _json_values(k, v) for k, v in outputs.items()}
    if "instances" in request:
        return {"predictions": _columns_to_rows(outputs)}
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values()))}
    return {"outputs": outputs}


def is_b64(value):
    """`{"b64": "<base64>"}`, TF Serving's form of binary data in JSON (one key, a string)."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_strings(value, name):
    """JSON strings and b64 objects of a string input -> bytes, at any depth."""
    if isinstance(value, list):
        return [_decode_strings(v, name) for v in value]
    if is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ServingError("INVALID_ARGUMENT", f"Unable to base64 decode a value of input {name!r}") from None
    if isinstance(value, str):
        return value.encode()
    raise ServingError(
        "INVALID_ARGUMENT",
        f'Input {name!r} takes strings: JSON strings or {{"b64": "<base64>"}} objects. '
        f"Received: a {type(value).__name__}",
    )


def _json_values(name, array):
    """An output as JSON-ready lists; strings as text, or as b64 objects when the name ends in `_bytes`."""
    if array.dtype != object:
        return array.tolist()
    if name.endswith("_bytes"):
        return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(array).tolist()
    return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()


def _rows_to_columns(instances, names):
    if not isinstance(instances, list) or not instances:
        raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list, one entry per example.")
    named = [isinstance(row, dict) and not is_b64(row) for row in instances]
    if all(named):
        keys = {tuple(sorted(row)) for row in instances}
        if len(keys) != 1:
            raise ServingError("INVALID_ARGUMENT", f"Every instance must have the same keys. Received: {sorted(keys)}")
        return {key: [row[key] for row in instances] for key in next(iter(keys))}
    if any(named):
        raise ServingError("INVALID_ARGUMENT", "Mix of named (object) and unnamed instances.")
    if len(names) != 1:
        raise ServingError(
            "INVALID_ARGUMENT", f"The signature takes {names}: give each instance as an object with those keys."
        )
    return {names[0]: instances}


def _columns_to_rows(outputs):
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    batch = len(next(iter(outputs.values())))
    return [{k: v[i] for k, v in outputs.items()} for i in range(batch)]


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One request; the server holds the repository, the batcher, the metrics and the limits."""

    protocol_version = "HTTP/1.1"
    server_version = "nsladv-serving"

    def setup(self):
        self.timeout = self.server.request_timeout  # reading a request: a stalled client is dropped
        super().setup()
        # The headers and the body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the body
        # until the client's delayed ACK, 40 ms per request on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def do_GET(self):
        monitoring = self.server.monitoring
        if monitoring is not None and monitoring.enable and self.path.split("?", 1)[0] == monitoring.path:
            return self._send(200, self.server.metrics.exposition(), prometheus_client.CONTENT_TYPE_LATEST)
        self._handle(self._get)

    def do_POST(self):
        self._handle(self._post)

    def _get(self, parts, info):
        if parts["verb"]:
            raise ServingError("INVALID_ARGUMENT", f"Use POST for :{parts['verb']}.")
        args = (self.server.repository, parts["name"], parts["version"], parts["label"])
        return metadata_json(*args) if parts["metadata"] else status_json(*args)

    def _post(self, parts, info):
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body_bytes:
            self.close_connection = True
            raise ServingError(
                "RESOURCE_EXHAUSTED",
                f"The request body has {length} bytes; this server takes at most {self.server.max_body_bytes}.",
            )
        body = self.rfile.read(length)
        if parts["verb"] != "predict":
            verb = parts["verb"] or ("metadata" if parts["metadata"] else "status")
            raise ServingError(
                "UNIMPLEMENTED" if parts["verb"] else "INVALID_ARGUMENT", f"POST {verb} is not supported; use :predict."
            )
        return predict_json(
            self.server.repository,
            parts["name"],
            parts["version"],
            parts["label"],
            body,
            self.server.batcher,
            info=info,
            deadline=info["start"] + self.server.request_timeout,
        )

    def _handle(self, method):
        info = {"start": time.monotonic()}
        parts = {"name": "", "verb": None}
        try:
            parts = _parse_path(self.path)
            status, code, payload = 200, "OK", method(parts, info)
        except ServingError as error:
            status, code, payload = error.http_status, error.code, {"error": error.message}
        except Exception as error:
            status, code, payload = 500, "INTERNAL", {"error": f"Internal error: {type(error).__name__}: {error}"}
        # Python's json writes NaN, Infinity and -Infinity, as TF Serving's REST API does.
        self._send(status, json.dumps(payload, default=_json_default).encode(), "application/json")
        if self.server.metrics is not None:  # as TF Serving's http_server.cc: every request, by model and status
            self.server.metrics.record(
                model_name=parts["name"] or "",
                api=parts["verb"] or "",
                entrypoint="REST",
                status=code,
                seconds=time.monotonic() - info["start"],
                version=info.get("version"),
                signature_name=info.get("signature_name", ""),
            )

    def _send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) drops connections under a burst of clients, which
    # then wait a second for TCP to retry.
    request_queue_size = 128

    def __init__(
        self,
        address,
        repository,
        *,
        max_body_bytes,
        verbose=False,
        batcher=None,
        metrics=None,
        monitoring=None,
        request_timeout=30.0,
    ):
        super().__init__(address, RestHandler)
        self.repository = repository
        self.batcher = batcher
        self.metrics = metrics
        self.monitoring = monitoring
        self.request_timeout = request_timeout
        self.max_body_bytes = max_body_bytes
        self.verbose = verbose
