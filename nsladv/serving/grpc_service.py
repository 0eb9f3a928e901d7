"""TF Serving's gRPC API over a `ModelRepository`, through the servicer classes
of the `tensorflow-serving-api` package: PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus."""

import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from nsladv.serving import predict as predict_lib
from nsladv.serving.errors import ServingError
from nsladv.serving.repository import DEFAULT_SIGNATURE


def _version_and_label(spec):
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label or None
    return version, label


def _abort(context, error):
    context.abort(error.grpc_status, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository, batcher=None):
        self.repository = repository
        self.batcher = batcher

    def Predict(self, request, context):
        try:
            version, label = _version_and_label(request.model_spec)
            loaded = self.repository.resolve(request.model_spec.name, version, label)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            signature, _ = loaded.signature(signature_name)
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except Exception as error:
                raise ServingError("INVALID_ARGUMENT", f"Malformed input tensor: {error}") from None
            outputs = predict_lib.run(
                signature,
                inputs,
                tuple(request.output_filter),
                exact_dtypes=True,
                batcher=self.batcher,
                key=(loaded.name, loaded.version, signature_name),
            )
        except ServingError as error:
            return _abort(context, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Metadata field(s) {list(request.metadata_field)} not supported; expected ['signature_def'].",
                )
            version, label = _version_and_label(request.model_spec)
            loaded = self.repository.resolve(request.model_spec.name, version, label)
        except ServingError as error:
            return _abort(context, error)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        try:
            version, label = _version_and_label(request.model_spec)
            statuses = self.repository.status(request.model_spec.name, version, label)
        except ServingError as error:
            return _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in statuses:
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        return response
