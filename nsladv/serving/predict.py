"""Validated prediction: named input arrays in, named output arrays out."""

import numpy as np
import tensorflow as tf

from nsladv.serving.errors import ServingError


def input_specs(signature):
    """{input name: tf.TensorSpec} of a concrete signature function."""
    return dict(signature.structured_input_signature[1])


def validate(inputs, specs):
    """Checks names, dtypes, shapes and values; returns {name: np.ndarray}.

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
    for name, spec in specs.items():
        value = inputs[name]
        try:
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
        except (ValueError, TypeError):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Input {name!r} must be a rectangular array of {spec.dtype.name} values. Received: {_describe(value)}",
            ) from None
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Input {name!r} contains NaN or infinity; expected finite {spec.dtype.name} values.",
            )
        if not spec.shape.is_compatible_with(array.shape):
            expected = tuple(-1 if d is None else d for d in spec.shape.as_list())
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Input {name!r} must have shape {expected} (-1: any). Received: shape {array.shape}",
            )
        arrays[name] = array
    return arrays


def _describe(value):
    if isinstance(value, list):
        return f"a list of {len(value)} ({', '.join(sorted({type(v).__name__ for v in value})[:3])})"
    return f"a {type(value).__name__}"


def run(signature, inputs, output_filter=()):
    """Runs a signature on validated inputs: {output name: np.ndarray}."""
    arrays = validate(inputs, input_specs(signature))
    outputs = signature(**{k: tf.constant(v) for k, v in arrays.items()})
    if output_filter:
        unknown = sorted(set(output_filter) - set(outputs))
        if unknown:
            raise ServingError(
                "INVALID_ARGUMENT", f"output_filter names unknown outputs {unknown}. Outputs: {sorted(outputs)}"
            )
        outputs = {k: outputs[k] for k in output_filter}
    return {k: v.numpy() for k, v in outputs.items()}
