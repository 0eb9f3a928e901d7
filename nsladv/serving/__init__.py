"""A local server speaking TensorFlow Serving's REST and gRPC APIs, and a client for both.

For development and CI where `tensorflow_model_server` cannot be installed;
production serves the same `saved_models/` with the real TF Serving (see the
README). The server follows TF Serving's API so the same clients work against
both.
"""

from nsladv.serving.batching import BatchingParameters
from nsladv.serving.client import GrpcClient
from nsladv.serving.client import RestClient
from nsladv.serving.errors import ServingError
from nsladv.serving.repository import ModelRepository
from nsladv.serving.server import Server

__all__ = ["BatchingParameters", "GrpcClient", "ModelRepository", "RestClient", "Server", "ServingError"]
