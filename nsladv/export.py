"""Export the hardened base model in the layout TensorFlow Serving reads.

    saved_models/
      models.config                  TF Serving model config (text proto)
      <name>/
        <version>/                   a SavedModel, numbered 1, 2, ...
          saved_model.pb, variables/
          assets.extra/
            nsladv_metadata.json     threat model, regularization, robustness, versions
            tf_serving_warmup_requests   PredictionLog records TF Serving replays on load

A version is written into a non-numeric temporary folder beside the versions
(TF Serving loads any numeric folder it sees), reloaded, checked against the
Keras model on two batch sizes, and only then renamed to its number. An
interrupted export leaves no numeric folder behind; the next export removes
its leftovers.
"""

import json
import os
import pathlib
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

from nsladv._files import replace_file
from nsladv.errors import ExportError

SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "nsladv_metadata.json"
MODELS_CONFIG = "models.config"
_TEMP_PREFIX = ".partial-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_model_name(name):
    """Raises a ValueError unless `name` can be a TF Serving model name."""
    if not isinstance(name, str) or not _NAME.match(name) or name.isdigit():
        raise ValueError(
            "The model name must be letters, digits, '_', '.' or '-' (not only digits), "
            f"as TF Serving URLs use it. Received: name={name!r}"
        )


def versions(model_dir):
    """The numeric version folders of a model, ascending."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def serving_function(model, input_shape, input_name="image", from_logits=True):
    """The `serving_default` function: float32 pixels in [0, 1] -> named outputs.

    Outputs: `logits` [batch, classes] float32, `probabilities` [batch,
    classes] float32 and `class_ids` [batch] int64. Only standard TF ops.
    """
    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(inputs):
        outputs = tf.cast(model(inputs, training=False), tf.float32)
        if from_logits:
            logits, probabilities = outputs, tf.nn.softmax(outputs, axis=-1)
        else:
            probabilities, logits = outputs, tf.math.log(tf.maximum(outputs, 1e-12))
        return {
            "logits": logits,
            "probabilities": probabilities,
            "class_ids": tf.argmax(logits, axis=-1, output_type=tf.int64),
        }

    return serve


def bytes_serving_function(serve, input_shape, input_name="image"):
    """The `serving_bytes` function: encoded PNG or JPEG images -> `serve`'s outputs.

    Its input, `<input_name>_bytes` (a string per image, sent as `{"b64": ...}`
    over REST), is decoded in the graph with `tf.io.decode_image` to the
    model's channels, checked against its height and width (INVALID_ARGUMENT
    otherwise), and scaled to [0, 1] as the training data was (`pixels / 255`).
    None when the input is not an image (height, width, 1 or 3 channels).
    """
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        return None
    height, width, channels = (int(d) for d in input_shape)
    spec = tf.TensorSpec([None], tf.string, name=f"{input_name}_bytes")

    def decode(encoded):
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        check = tf.debugging.assert_equal(
            tf.shape(image)[:2],
            tf.constant([height, width]),
            message=f"Each image must be {height}x{width} pixels (PNG or JPEG); received height and width",
        )
        with tf.control_dependencies([check]):
            # A reshape, not ensure_shape: Grappler may run ensure_shape's check before the assert.
            return tf.reshape(image, [height, width, channels])

    @tf.function(input_signature=[spec])
    def serve_bytes(encoded):
        images = tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))
        return serve(tf.cast(images, tf.float32) / 255.0)

    return serve_bytes


def encode_png(images):
    """PNG bytes of [0, 1] float images (batch first), as a client of `serving_bytes` sends them."""
    pixels = np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
    return [tf.io.encode_png(image).numpy() for image in pixels]


def export_model(
    model,
    base_dir,
    name,
    *,
    input_shape,
    input_name="image",
    from_logits=True,
    metadata=None,
    warmup_inputs=None,
    check_inputs=None,
    write_models_config=True,
    serving_base_path="/models",
):
    """Exports `model` as the next version of `name` under `base_dir`.

    Args:
        model: the (base, hardened) Keras classifier.
        base_dir: the folder TF Serving's `--model_base_path`s live in
            (`saved_models/`).
        name: the model name clients ask for.
        input_shape: one example's shape, e.g. `(28, 28, 1)`.
        input_name: the signature's input name.
        from_logits: whether the model outputs logits.
        metadata: JSON-ready dict written to `assets.extra/`.
        warmup_inputs: a few inputs (array, batch first) written as TF
            Serving warmup requests.
        check_inputs: inputs the reloaded export must reproduce the Keras
            predictions on, the first alone and all in chunks (default:
            random pixels); pass the evaluated test inputs to prove the
            export is the model the figures describe.
        write_models_config: (re)write `base_dir/models.config`.
        serving_base_path: where `base_dir` is mounted in the TF Serving
            container, for `models.config`.

    Returns:
        The path of the new version folder.

    Raises:
        ValueError: for an invalid name.
        ExportError: if the reloaded export does not match the model.
    """
    check_model_name(name)
    model_dir = pathlib.Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(model_dir)
    version = (versions(model_dir) or [0])[-1] + 1
    partial = model_dir / f"{_TEMP_PREFIX}{version}-{os.getpid()}"
    try:
        serve = serving_function(model, input_shape, input_name, from_logits)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, serve)
        serve_bytes = bytes_serving_function(serve, input_shape, input_name)
        if serve_bytes is not None:
            archive.add_endpoint(BYTES_SIGNATURE, serve_bytes)
        archive.write_out(str(partial), verbose=False)
        extra = partial / "assets.extra"
        extra.mkdir()
        (extra / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=2) + "\n")
        if warmup_inputs is not None:
            write_warmup_requests(extra / WARMUP_FILE, name, input_name, warmup_inputs)
        if check_inputs is None:
            check_inputs = np.random.default_rng(0).random((9, *input_shape), dtype=np.float32)
        check_export(partial, serve, check_inputs)
        final = model_dir / str(version)
        os.rename(partial, final)  # Atomic: TF Serving sees all of it or nothing.
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if write_models_config:
        write_models_config_file(base_dir, serving_base_path=serving_base_path)
    return final


def check_export(path, serve, inputs, *, chunk=500):
    """Reloads the SavedModel and compares it with `serve` on every input: one alone, then in chunks."""
    reloaded = tf.saved_model.load(str(path))
    signature = reloaded.signatures[SIGNATURE]
    inputs = np.asarray(inputs, np.float32)
    if BYTES_SIGNATURE in reloaded.signatures:
        # The bytes signature must give serving_default's outputs on the same (8-bit) pixels.
        pixels = np.round(np.clip(inputs[:16], 0, 1) * 255.0) / 255.0
        expected = signature(tf.constant(pixels, tf.float32))
        got = reloaded.signatures[BYTES_SIGNATURE](tf.constant(encode_png(pixels)))
        for key, value in expected.items():
            if not np.allclose(got[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-5):
                raise ExportError(f"The reloaded export's {BYTES_SIGNATURE} {key!r} differs from {SIGNATURE}'s.")
    batches = [inputs[:1]] + [inputs[i : i + chunk] for i in range(0, len(inputs), chunk)]
    for batch in batches:
        expected = serve(tf.constant(batch))
        got = signature(tf.constant(batch))
        for key, value in expected.items():
            if not np.allclose(got[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-5):
                raise ExportError(
                    f"The reloaded export's {key!r} differs from the Keras model on a batch "
                    f"of {len(batch)}: max difference {np.max(np.abs(got[key].numpy() - value.numpy()))}"
                )


def write_warmup_requests(path, model_name, input_name, inputs):
    """TF Serving warmup records: one `PredictionLog` per input batch row."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in np.asarray(inputs, np.float32):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SIGNATURE
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(row[None]))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def write_models_config_file(base_dir, *, serving_base_path="/models"):
    """`base_dir/models.config` listing every model folder, latest version served."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base_dir = pathlib.Path(base_dir)
    config = model_server_config_pb2.ModelServerConfig()
    for model_dir in sorted(p for p in base_dir.iterdir() if p.is_dir() and versions(p)):
        entry = config.model_config_list.config.add()
        entry.name = model_dir.name
        entry.base_path = f"{serving_base_path.rstrip('/')}/{model_dir.name}"
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = 1
    return replace_file(base_dir / MODELS_CONFIG, text_format.MessageToString(config))


def _remove_leftovers(model_dir):
    """Removes partial exports whose process is gone."""
    for path in model_dir.glob(f"{_TEMP_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
