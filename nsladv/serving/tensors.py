"""TensorProto <-> numpy for the gRPC API, as TF Serving writes and reads them, without TensorFlow's slow paths.

Responses: TF Serving writes each output tensor with `Tensor::AsProtoField`
(values in the dtype's repeated field: `float_val`, `int64_val`, ...) unless
it runs with `--enable_serialization_as_tensor_content`, which writes
`AsProtoTensorContent` (the raw little-endian bytes in `tensor_content`;
strings stay in `string_val`). Source: tensorflow_serving/servables/tensorflow/
predict_util.cc and model_servers/server.cc.

Requests: the values may come either way; `to_ndarray` reads the common
numeric `tensor_content` case straight from the bytes and leaves everything
else (repeated fields, with TensorFlow's rule that the last value fills a
short field, strings, half floats) to `tf.make_ndarray`. Measured here:
`tf.make_tensor_proto` on an MNIST response's three outputs 38.5 us against
5.9 us for `to_proto`; `tf.make_ndarray` on a 28x28 image 5.7 us against 2.5 us.
"""

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

# numpy dtype -> (TensorFlow DataType enum, the TensorProto field AsProtoField writes).
_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
# DataType enum -> numpy dtype, for the tensor_content fast path (little-endian, as TensorFlow writes it).
_CONTENT_DTYPES = {enum: dtype.newbyteorder("<") for dtype, (enum, _) in _FIELDS.items()}


def to_ndarray(proto):
    """The numpy array of a TensorProto (what `tf.make_ndarray` returns).

    Raises:
        ValueError: the values do not fit the shape.
    """
    dtype = _CONTENT_DTYPES.get(proto.dtype)
    if dtype is None or not proto.tensor_content:
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    array = np.frombuffer(proto.tensor_content, dtype=dtype)
    count = math.prod(shape)
    if array.size != count:
        raise ValueError(f"tensor_content holds {array.size} values; shape {shape} needs {count}")
    # A copy (the request's bytes are read-only and are freed with it), in the machine's byte order.
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def to_proto(array, *, as_content=False):
    """A TensorProto of a numpy array, as TF Serving writes outputs.

    Args:
        array: the output array.
        as_content: write the values as raw bytes in `tensor_content`
            (TF Serving's `--enable_serialization_as_tensor_content`) rather
            than in the dtype's repeated field.
    """
    array = np.asarray(array)
    known = _FIELDS.get(array.dtype)
    if known is None:  # strings, half floats, complex, ...: TensorFlow's own conversion
        proto = tf.make_tensor_proto(array)
        if array.dtype.kind in "OSU":
            return proto  # strings stay in string_val either way
        if as_content:
            if proto.tensor_content:
                return proto
            bare = tensor_pb2.TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape)
            bare.tensor_content = np.ascontiguousarray(array).tobytes()
            return bare
        return _as_field(array, proto)
    enum, field = known
    proto = tensor_pb2.TensorProto(dtype=enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if as_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    else:
        getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _as_field(array, proto):
    """Half and complex floats in their repeated fields (AsProtoField), from TensorFlow's tensor_content proto."""
    if not proto.tensor_content:
        return proto  # TensorFlow wrote the values in their field already
    field = {
        types_pb2.DT_HALF: "half_val",
        types_pb2.DT_BFLOAT16: "half_val",
        types_pb2.DT_COMPLEX64: "scomplex_val",
        types_pb2.DT_COMPLEX128: "dcomplex_val",
    }.get(proto.dtype)
    if field is None:
        return proto
    flat = array.ravel()
    if field == "half_val":
        values = flat.view(np.uint16).tolist()
    else:
        values = np.stack([flat.real, flat.imag], axis=-1).ravel().tolist()
    proto.ClearField("tensor_content")
    getattr(proto, field).extend(values)
    return proto
