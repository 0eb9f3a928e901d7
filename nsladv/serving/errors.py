"""Errors with TF Serving's status codes, and their HTTP and gRPC forms."""

import grpc

# tensorflow::error::Code -> HTTP status, as TF Serving's HTTP server maps them
# (tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode).
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def op_error_code(error):
    """The status name of a TensorFlow op error (`tf.errors.OpError`): its own code, as TF Serving passes it on."""
    import tensorflow as tf

    for name in HTTP_STATUS:
        if error.error_code == getattr(tf.errors, name):
            return name
    return "UNKNOWN"


class ServingError(Exception):
    """A request TF Serving would refuse, with its status code.

    Attributes:
        code: the TF Serving (gRPC) status name, e.g. `"NOT_FOUND"`.
        message: what was expected and what was received.
    """

    def __init__(self, code, message):
        super().__init__(message)
        if code not in HTTP_STATUS:
            raise ValueError(f"Unknown status code {code!r}; expected one of {sorted(HTTP_STATUS)}")
        self.code = code
        self.message = message

    @property
    def http_status(self):
        return HTTP_STATUS[self.code]

    @property
    def grpc_status(self):
        return getattr(grpc.StatusCode, self.code)

    def __str__(self):
        return f"{self.code}: {self.message}"
