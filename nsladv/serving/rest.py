"""TF Serving's REST API over a `ModelRepository` (a threaded HTTP server).

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signatures
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    predictions

Predict takes the row format (`instances`, answered with `predictions`) or
the columnar format (`inputs`, answered with `outputs`), and
`signature_name`. Errors are `{"error": "..."}` with TF Serving's HTTP codes.
"""

import http.server
import json
import re

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from nsladv.serving import predict as predict_lib
from nsladv.serving.errors import ServingError
from nsladv.serving.repository import DEFAULT_SIGNATURE

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
    return {
        "model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
            for v, state in repository.status(name, version, label)
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


def predict_json(repository, name, version, label, body, batcher=None):
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
    names = sorted(predict_lib.input_specs(signature))
    batching = {"batcher": batcher, "key": (loaded.name, loaded.version, signature_name)}
    if "instances" in request:
        outputs = predict_lib.run(signature, _rows_to_columns(request["instances"], names), **batching)
        return {"predictions": _columns_to_rows(outputs)}
    inputs = request["inputs"]
    if not isinstance(inputs, dict):  # A tensor is a list or a number; an object names inputs.
        if len(names) != 1:
            raise ServingError("INVALID_ARGUMENT", f"'inputs' must be an object with keys {names}.")
        inputs = {names[0]: inputs}
    outputs = predict_lib.run(signature, inputs, **batching)
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def _rows_to_columns(instances, names):
    if not isinstance(instances, list) or not instances:
        raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list, one entry per example.")
    named = [isinstance(row, dict) for row in instances]
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
        return next(iter(outputs.values())).tolist()
    batch = len(next(iter(outputs.values())))
    return [{k: v[i].tolist() for k, v in outputs.items()} for i in range(batch)]


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One request; the server holds `repository` and `max_body_bytes`."""

    protocol_version = "HTTP/1.1"
    server_version = "nsladv-serving"

    def log_message(self, format, *args):
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def do_GET(self):
        self._handle(self._get)

    def do_POST(self):
        self._handle(self._post)

    def _get(self, parts):
        if parts["verb"]:
            raise ServingError("INVALID_ARGUMENT", f"Use POST for :{parts['verb']}.")
        args = (self.server.repository, parts["name"], parts["version"], parts["label"])
        return metadata_json(*args) if parts["metadata"] else status_json(*args)

    def _post(self, parts):
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
            self.server.repository, parts["name"], parts["version"], parts["label"], body, self.server.batcher
        )

    def _handle(self, method):
        try:
            status, payload = 200, method(_parse_path(self.path))
        except ServingError as error:
            status, payload = error.http_status, {"error": error.message}
        except Exception as error:
            status, payload = 500, {"error": f"Internal error: {type(error).__name__}: {error}"}
        data = json.dumps(payload, default=_json_default).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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

    def __init__(self, address, repository, *, max_body_bytes, verbose=False, batcher=None):
        super().__init__(address, RestHandler)
        self.repository = repository
        self.batcher = batcher
        self.max_body_bytes = max_body_bytes
        self.verbose = verbose
