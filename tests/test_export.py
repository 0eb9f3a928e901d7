"""The TF Serving export: layout, signature, parity, metadata, warmup, atomicity."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from nsladv import export


def classifier():
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(8, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 4, 4, 1), dtype=np.float32)


def saved_ops(path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def test_export_layout_signature_and_parity(tmp_path):
    model = classifier()
    path = export.export_model(
        model, tmp_path, "digits", input_shape=(4, 4, 1), metadata={"robust_accuracy": 0.9}, warmup_inputs=images(3)
    )
    assert path == tmp_path / "digits" / "1"
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image"]
    assert signature.structured_input_signature[1]["image"].dtype == tf.float32
    outputs = signature.structured_outputs
    assert sorted(outputs) == ["class_ids", "logits", "probabilities"]
    assert outputs["class_ids"].dtype == tf.int64
    for batch in (images(1, 1), images(5, 2)):
        got = signature(image=tf.constant(batch))
        logits = model.predict(batch, verbose=0)
        np.testing.assert_allclose(got["logits"], logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["probabilities"], tf.nn.softmax(logits), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["class_ids"], np.argmax(logits, axis=1))
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & saved_ops(path)
    assert json.loads((path / "assets.extra" / "nsladv_metadata.json").read_text()) == {"robust_accuracy": 0.9}


def test_warmup_records_replay_through_the_signature(tmp_path):
    model = classifier()
    warmup = images(3, 5)
    path = export.export_model(model, tmp_path, "digits", input_shape=(4, 4, 1), warmup_inputs=warmup)
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    records = list(tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests")))
    assert len(records) == 3
    for record, row in zip(records, warmup):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "digits" and request.model_spec.signature_name == "serving_default"
        tensor = tf.make_ndarray(request.inputs["image"])
        np.testing.assert_array_equal(tensor, row[None])
        replayed = signature(image=tf.constant(tensor))
        np.testing.assert_allclose(replayed["logits"], model.predict(row[None], verbose=0), rtol=1e-5, atol=1e-6)


def test_versions_increase_and_models_config_lists_them(tmp_path):
    model = classifier()
    for expected in (1, 2, 3):
        assert export.export_model(model, tmp_path, "digits", input_shape=(4, 4, 1)).name == str(expected)
    export.export_model(model, tmp_path, "other", input_shape=(4, 4, 1), serving_base_path="/srv/models/")
    assert export.versions(tmp_path / "digits") == [1, 2, 3]
    config = text_format.Parse((tmp_path / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c.base_path for c in config.model_config_list.config}
    assert entries == {"digits": "/srv/models/digits", "other": "/srv/models/other"}


def test_invalid_name(tmp_path):
    with pytest.raises(ValueError, match=r"The model name must be letters.*Received: name='12'"):
        export.export_model(classifier(), tmp_path, "12", input_shape=(4, 4, 1))
    with pytest.raises(ValueError, match=r"Received: name='a/b'"):
        export.export_model(classifier(), tmp_path, "a/b", input_shape=(4, 4, 1))


def test_a_failed_check_leaves_no_version(tmp_path, monkeypatch):
    def broken_check(path, serve, inputs):
        raise export.ExportError("mismatch")

    monkeypatch.setattr(export, "check_export", broken_check)
    with pytest.raises(export.ExportError):
        export.export_model(classifier(), tmp_path, "digits", input_shape=(4, 4, 1))
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == []


def test_check_export_detects_a_mismatch(tmp_path):
    model = classifier()
    path = export.export_model(model, tmp_path, "digits", input_shape=(4, 4, 1))
    other = export.serving_function(classifier(), (4, 4, 1))
    with pytest.raises(export.ExportError, match=r"differs from the Keras model on a batch of 1"):
        export.check_export(path, other, images(4))


KILLED_EXPORT = textwrap.dedent(
    """
    import pathlib, sys, time
    import keras
    from nsladv import export

    def slow_check(path, serve, inputs):
        pathlib.Path(sys.argv[2]).write_text("writing")
        time.sleep(60)

    export.check_export = slow_check
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    export.export_model(model, sys.argv[1], "digits", input_shape=(4, 4, 1))
    """
)


@pytest.mark.slow
def test_an_export_killed_half_way_leaves_no_numeric_folder(tmp_path):
    flag = tmp_path / "flag"
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(tmp_path / "models"), str(flag)])
    deadline = time.time() + 120
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert flag.exists(), "the export never reached its check"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    model_dir = tmp_path / "models" / "digits"
    leftovers = [p.name for p in model_dir.iterdir()]
    assert leftovers and not any(name.isdigit() for name in leftovers)
    assert (model_dir / leftovers[0] / "saved_model.pb").exists()  # it was killed mid-export
    path = export.export_model(classifier(), tmp_path / "models", "digits", input_shape=(4, 4, 1))
    assert path.name == "1" and [p.name for p in model_dir.iterdir()] == ["1"]
