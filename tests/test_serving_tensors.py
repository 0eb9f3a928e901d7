"""TensorProto <-> numpy (nsladv.serving.tensors) against TensorFlow's own conversions."""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

from nsladv.serving import tensors

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.arange(6, dtype=np.float64).reshape(2, 3) - 2.5,
    np.array([[1, -2, 3]], dtype=np.int32),
    np.array([7, 8], dtype=np.int64),
    np.array([[0, 255]], dtype=np.uint8),
    np.array([True, False, True]),
    np.array([3], dtype=np.int64),  # one value: TensorFlow writes it in int64_val, not tensor_content
    np.zeros((0, 4), dtype=np.float32),
    np.array(2.5, dtype=np.float32),  # a scalar
    np.array([b"ab", b"\x00\xff"], dtype=object),
    np.array([1.5, -2.0], dtype=np.float16),
    np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
    np.array([1 + 2j, -3j], dtype=np.complex64),
]
# The repeated fields AsProtoField writes these dtypes' values in.
VALUE_FIELDS = ("float_val", "double_val", "int_val", "int64_val", "bool_val", "half_val", "scomplex_val")


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
@pytest.mark.parametrize("as_content", [False, True])
def test_to_proto_round_trips_through_tensorflows_reader(array, as_content):
    proto = tensors.to_proto(array, as_content=as_content)
    back = tf.make_ndarray(proto)
    assert back.dtype == tf.make_ndarray(tf.make_tensor_proto(array)).dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert tensors.to_ndarray(proto).shape == array.shape


@pytest.mark.parametrize("array", [a for a in ARRAYS if a.dtype != object], ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_outputs_are_written_as_tf_serving_writes_them(array):
    """TF Serving's default (predict_util.cc, kAsProtoField): values in the dtype's repeated field; with
    --enable_serialization_as_tensor_content (server.cc, kAsProtoContent): raw bytes in tensor_content."""
    field = tensors.to_proto(array)
    assert not field.tensor_content
    content = tensors.to_proto(array, as_content=True)
    assert content.tensor_content == array.astype(array.dtype.newbyteorder("<")).tobytes()
    for name in VALUE_FIELDS:
        assert not len(getattr(content, name)), name
    if array.size:
        assert any(len(getattr(field, name)) for name in VALUE_FIELDS)


@pytest.mark.parametrize(
    "proto",
    [
        tf.make_tensor_proto(np.arange(20, dtype=np.float32).reshape(4, 5)),
        tf.make_tensor_proto(np.arange(6, dtype=np.int64).reshape(1, 6)),
        tf.make_tensor_proto(np.array([[1, 2]], dtype=np.uint8)),
        tf.make_tensor_proto(np.arange(4, dtype=np.float64)),
        # a short repeated field: TensorFlow repeats the last value
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tf.TensorShape([2, 3]).as_proto(),
            float_val=[1.0, 2.0],
        ),
        tf.make_tensor_proto([b"x", b"yz"]),
        tf.make_tensor_proto(np.array([0.5, 1.0], dtype=np.float16)),
    ],
    ids=["float32", "int64", "uint8", "float64", "short-field", "string", "float16"],
)
def test_to_ndarray_reads_what_tensorflow_reads(proto):
    expected = tf.make_ndarray(proto)
    got = tensors.to_ndarray(proto)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if got.dtype != object:
        got[...] = 0  # writable, and not a view of the request's bytes


def test_tensor_content_that_does_not_fit_the_shape_is_refused():
    proto = tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))
    proto.tensor_shape.dim[1].size = 4
    with pytest.raises(ValueError, match=r"tensor_content holds 6 values; shape \[2, 4\] needs 8"):
        tensors.to_ndarray(proto)
