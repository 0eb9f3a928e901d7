"""TF Serving's gRPC API over a `ModelRepository`, through the servicer classes
of the `tensorflow-serving-api` package: PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus and HandleReloadConfigRequest."""

import time

from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import status_pb2

from nsladv.serving import predict as predict_lib
from nsladv.serving import tensors
from nsladv.serving.errors import ServingError
from nsladv.serving.repository import DEFAULT_SIGNATURE


def _version_and_label(spec):
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label or None
    return version, label


def _status_number(name):
    """The number of a `tensorflow.error.Code` name, as StatusProto stores it."""
    enum = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    return enum.values_by_name[name].number


def _abort(context, error):
    context.abort(error.grpc_status, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository, batcher=None, metrics=None, request_timeout=None, tensor_content=False):
        self.repository = repository
        self.batcher = batcher
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.tensor_content = tensor_content  # outputs as raw bytes (--enable_serialization_as_tensor_content)

    def Predict(self, request, context):
        start = time.monotonic()
        served = {}
        code = "INTERNAL"
        try:
            response = self._predict(request, context, start, served)
            code = "OK"
            return response
        except ServingError as error:
            code = error.code
            return _abort(context, error)
        finally:
            if self.metrics is not None:  # as TF Serving's prediction_service_impl.cc: every Predict
                self.metrics.record(
                    model_name=request.model_spec.name,
                    api="Predict",
                    entrypoint="GRPC",
                    status=code,
                    seconds=time.monotonic() - start,
                    **served,
                )

    def _predict(self, request, context, start, served):
        limits = [t for t in (context.time_remaining(), self.request_timeout) if t is not None]
        version, label = _version_and_label(request.model_spec)
        loaded = self.repository.resolve(request.model_spec.name, version, label)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        served.update(version=loaded.version, signature_name=signature_name)
        signature, _ = loaded.signature(signature_name)
        try:
            inputs = {k: tensors.to_ndarray(v) for k, v in request.inputs.items()}
        except Exception as error:
            raise ServingError("INVALID_ARGUMENT", f"Malformed input tensor: {error}") from None
        outputs = predict_lib.run(
            signature,
            inputs,
            tuple(request.output_filter),
            exact_dtypes=True,
            batcher=self.batcher,
            key=(loaded.name, loaded.version, signature_name),
            deadline=start + min(limits) if limits else None,
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_proto(value, as_content=self.tensor_content))
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
        """As TF Serving's GetModelStatusImpl: every version the model has had, or the one asked for."""
        try:
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            version, _ = _version_and_label(request.model_spec)
            statuses = self.repository.status(request.model_spec.name, version)
        except ServingError as error:
            return _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in statuses:
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = _status_number(status.error_code)
            entry.status.error_message = status.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):
        """As TF Serving's ModelServiceImpl: the status goes in the response and in the RPC's own status."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.repository.reload(request.config)
        except ServingError as error:
            response.status.error_code = _status_number(error.code)
            response.status.error_message = error.message
            context.set_code(error.grpc_status)
            context.set_details(error.message)
        return response
