"""The model a job starts from: the pipeline's `build_model`, or the user's (a `keras.Model` or a `.keras` file),
described and fingerprinted for reports and resumes."""

import hashlib
import pathlib

import keras
import numpy as np

from nsladv import precision as precision_lib
from nsladv.errors import ModelNotFoundError
from nsladv.errors import SettingsError


def pipeline_of(pipeline):
    """An `nsladv.Pipeline` from itself, a bundled pipeline's name or a pipeline file (None: the default)."""
    from nsladv.jobs.pipeline import DEFAULT_PIPELINE
    from nsladv.jobs.pipeline import Pipeline
    from nsladv.jobs.pipeline import load_pipeline

    if pipeline is None or isinstance(pipeline, (str, pathlib.PurePath)):
        return load_pipeline(str(pipeline or DEFAULT_PIPELINE))
    if not isinstance(pipeline, Pipeline):
        raise SettingsError(
            "Expected an nsladv.Pipeline, a pipeline's name or a pipeline file. "
            f"Received: pipeline of type {type(pipeline).__name__}"
        )
    return pipeline


def describe(model):
    """Where the model came from, in words, for reports."""
    if model is None:
        return "the pipeline's build_model"
    if isinstance(model, keras.Model):
        return f"the keras.Model {model.name!r} given in Python"
    return str(model)


def fingerprint(model):
    """What identifies the model a run starts from: a file's path and size, or an in-memory model's weights."""
    if model is None:
        return None
    if isinstance(model, keras.Model):
        digest = hashlib.sha256(f"{type(model).__name__}:{model.name}".encode())
        for weight in model.weights:
            digest.update(np.asarray(weight).tobytes())
        return f"keras.Model {model.name} {digest.hexdigest()[:16]}"
    path = pathlib.Path(model)
    return f"{path} ({path.stat().st_size} bytes)" if path.is_file() else str(path)


def load(model):
    """The user's model: a keras.Model as it is, or a `.keras` file loaded."""
    if isinstance(model, keras.Model):
        return model
    path = pathlib.Path(model)
    if not path.is_file() or path.suffix != ".keras":
        raise ModelNotFoundError(
            f"Expected a saved Keras model file (.keras) or a keras.Model. Received: model {str(model)!r}"
            + ("" if path.is_file() else " (no such file)")
        )
    return keras.saving.load_model(path, compile=False)


def training_precision(chosen, requested, model, loaded):
    """(the precision the job trains in, the user's model in it): `chosen`, unless the user's model cannot change."""
    if loaded is None:
        return chosen, None
    own = precision_lib.of_model(loaded)
    if own == chosen.name:
        return chosen, loaded
    if not isinstance(model, keras.Model):  # A file: a copy in the chosen precision, where layers can be rebuilt.
        try:
            return chosen, precision_lib.in_precision(loaded, chosen)
        except SettingsError:
            if requested != "auto":
                raise
            return precision_lib.Precision(own, "a subclassed model keeps the precision it was built in"), loaded
    if requested != "auto":
        raise SettingsError(
            f"A keras.Model given in Python trains in place, in the precision it was built in ({own}). Build it "
            f"under keras.config.set_dtype_policy({chosen.policy!r}) to train it in {chosen.name}, or pass "
            f"precision='auto'. Received: precision={requested!r} for a {own} model"
        )
    return precision_lib.Precision(own, "a keras.Model given in Python trains in the precision it was built in"), loaded
