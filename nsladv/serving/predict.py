"""Validated prediction: named input arrays in, named output arrays out."""

import time

import numpy as np
import tensorflow as tf

from nsladv.serving.errors import ServingError
from nsladv.serving.errors import op_error_code


def input_specs(signature):
    """{input name: tf.TensorSpec} of a concrete signature function."""
    return dict(signature.structured_input_signature[1])


def validate(inputs, specs, *, exact_dtypes=False):
    """Checks names, dtypes and shapes; returns {name: np.ndarray}.

    As TF Serving does: REST's JSON numbers become the signature's dtype,
    while a gRPC TensorProto must already have it (`exact_dtypes`); NaN and
    infinities pass through to the model.

    Raises:
        ServingError: INVALID_ARGUMENT with what was expected and received.
    """
    missing = sorted(set(specs) - set(inputs))
    unknown = sorted(set(inputs) - set(specs))
    if missing or unknown:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"The signature takes inputs {sorted(specs)}. Received: {sorted(inputs)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {unknown})" if unknown else ""),
        )
    arrays = {}
    for index, (name, spec) in enumerate(sorted(specs.items())):
        value = inputs[name]
        if exact_dtypes and isinstance(value, np.ndarray) and value.dtype != spec.dtype.as_numpy_dtype:
            # TF Serving's words (TensorFlow's argument check): arg[i] counts the inputs in name order.
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expects arg[{index}] to be {_tf_name(spec.dtype)} but "
                f"{_tf_name(tf.as_dtype(value.dtype))} is provided",
            )
        try:
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
        except (ValueError, TypeError):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Input {name!r} must be a rectangular array of {spec.dtype.name} values. Received: {_describe(value)}",
            ) from None
        if not spec.shape.is_compatible_with(array.shape):
            expected = tuple(-1 if d is None else d for d in spec.shape.as_list())
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Input {name!r} must have shape {expected} (-1: any). Received: shape {array.shape}",
            )
        arrays[name] = array
    return arrays


def _op_message(error):
    """An op error's own words, without the graph's stack trace and node names."""
    lines = [line.strip() for line in error.message.splitlines()]
    lines = [line for line in lines if line and not line.startswith("[[") and not line.startswith("<stack")]
    return lines[-1] if lines else str(error)


def _tf_name(dtype):
    """TensorFlow's C++ name of a dtype (`float`, `double`, `int32`), as its error messages say it."""
    return {"float32": "float", "float64": "double", "float16": "half"}.get(dtype.name, dtype.name)


def _describe(value):
    if isinstance(value, list):
        return f"a list of {len(value)} ({', '.join(sorted({type(v).__name__ for v in value})[:3])})"
    return f"a {type(value).__name__}"


def run(signature, inputs, output_filter=(), *, exact_dtypes=False, batcher=None, key=None, deadline=None):
    """Runs a signature on validated inputs: {output name: np.ndarray}.

    With a `batcher` (`nsladv.serving.batching.Batcher`), the rows join
    other requests to the same `key` (model, version, signature) in one call.
    `deadline` (`time.monotonic()` seconds): a request still waiting for the
    model then fails with DEADLINE_EXCEEDED (a call under way is not cut short).
    """
    arrays = validate(inputs, input_specs(signature), exact_dtypes=exact_dtypes)
    if output_filter:
        unknown = sorted(set(output_filter) - set(signature.structured_outputs))
        if unknown:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"output_filter names unknown outputs {unknown}. Outputs: {sorted(signature.structured_outputs)}",
            )
    if deadline is not None and time.monotonic() >= deadline:
        raise ServingError("DEADLINE_EXCEEDED", "Deadline exceeded before the model ran")
    try:
        if batcher is not None:
            outputs = batcher.run(key, signature, arrays, deadline=deadline)
        else:
            outputs = {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in arrays.items()}).items()}
    except tf.errors.OpError as error:  # TF Serving answers with the op's own status (bad image bytes, ...)
        raise ServingError(op_error_code(error), _op_message(error)) from None
    return {k: outputs[k] for k in output_filter} if output_filter else outputs
