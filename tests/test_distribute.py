"""tf.distribute: MirroredStrategy over two logical CPUs equals one device; strategy choice."""

import json
import subprocess
import sys
import textwrap

import pytest

from nsladv import distribute

MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, nsladv

    def run(strategy, settings):
        settings = dict(settings)
        graph = settings.pop("graph", None)
        with strategy.scope():
            keras.utils.set_random_seed(0)
            base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
            model = nsladv.wrap(base, graph=graph and nsladv.GraphRegularization(**graph), **settings)
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        rng = np.random.default_rng(0)
        x, y = rng.random((64, 6)).astype("float32"), rng.integers(0, 3, 64)
        w = np.where(y == 0, 2.0, 1.0).astype("float32")
        features = x
        if graph:  # Two neighbors each, every edge weighted: each replica counts the same edges.
            features = {"f": x}
            for j in range(2):
                features[f"NL_nbr_{j}_f"] = rng.random((64, 6)).astype("float32")
                features[f"NL_nbr_{j}_weight"] = rng.uniform(0.5, 1.0, (64, 1)).astype("float32")
        dataset = tf.data.Dataset.from_tensor_slices((features, y, w)).batch(16)
        history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
        return [v.numpy() for v in base.weights], history.history

    results = {}
    for name, settings in json.loads(sys.argv[1]).items():
        one, h1 = run(tf.distribute.get_strategy(), settings)
        two, h2 = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), settings)
        results[name] = {
            "weights": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
            "logs": {k: [h1[k][-1], h2[k][-1]] for k in ("loss", "clean_loss", "neighbor_loss", "graph_loss", "accuracy") if k in h1},
        }
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_mirrored_over_two_devices_equals_one_device():
    settings = {
        "fgsm": {"epsilon": 0.1},
        "pgd": {"epsilon": 0.1, "steps": 3},
        "kl_random_start": {"epsilon": 0.1, "steps": 2, "distance": "kl"},
        "fgsm_and_graph": {"epsilon": 0.1, "graph": {"multiplier": 0.5, "distance": "kl", "from_logits": True}},
        "graph_label": {"epsilon": 0.1, "multiplier": 0.0, "graph": {"multiplier": 0.5, "distance": "label"}},
    }
    output = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(settings)], capture_output=True, text=True)
    assert output.returncode == 0, output.stderr[-3000:]
    results = json.loads(output.stdout.strip().splitlines()[-1])
    for name in ("fgsm", "pgd", "fgsm_and_graph", "graph_label"):  # deterministic: same global batch, same weights
        assert results[name]["weights"] < 1e-6, results[name]
        for key, (one, two) in results[name]["logs"].items():
            assert one == pytest.approx(two, rel=1e-5), (name, key)
    assert all(results[name]["logs"]["graph_loss"][0] > 0 for name in ("fgsm_and_graph", "graph_label"))
    # Random starts draw different noise per replica: close, not equal.
    kl = results["kl_random_start"]
    assert kl["weights"] < 1e-2
    assert kl["logs"]["clean_loss"][0] == pytest.approx(kl["logs"]["clean_loss"][1], rel=1e-2)


def test_strategy_names(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    import tensorflow as tf

    assert distribute.make_strategy("auto") is tf.distribute.get_strategy()
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    assert distribute.is_chief(tf.distribute.get_strategy())
    with pytest.raises(ValueError, match=r"Unknown strategy. Expected one of \['auto', .*Received: strategy='gpu'"):
        distribute.make_strategy("gpu")
    with pytest.raises(
        ValueError, match=r"strategy='multiworker' reads the cluster from TF_CONFIG, which lists no workers"
    ):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON"):
        distribute.make_strategy("auto")


def test_tpu_without_a_tpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"strategy='tpu' found no TPU to connect to.*Received: tpu=None"):
        distribute.make_strategy("tpu")


class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        import tensorflow as tf

        return tf.train.ClusterSpec(self._cluster)


class _Strategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


@pytest.mark.parametrize(
    "task_type, task_id, cluster, chief",
    [
        ("worker", 0, {"worker": ["a:1", "b:2"]}, True),
        ("worker", 1, {"worker": ["a:1", "b:2"]}, False),
        ("chief", 0, {"chief": ["a:1"], "worker": ["b:2"]}, True),
        ("worker", 0, {"chief": ["a:1"], "worker": ["b:2"]}, False),
    ],
)
def test_only_the_chief_writes(task_type, task_id, cluster, chief):
    assert distribute.is_chief(_Strategy(_Resolver(task_type, task_id, cluster))) is chief


HARDEN_MIRRORED = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nsladv import load_pipeline
    from nsladv.jobs import harden as hardening
    report = hardening.harden(load_pipeline(sys.argv[1]), strategy="mirrored", out_dir=sys.argv[2],
                              saved_models=sys.argv[3], data_dir=sys.argv[4], eval_examples=100, verbose=0)
    print(report["export"])
    """
)


@pytest.mark.slow
def test_harden_under_mirrored_strategy(tmp_path):
    import pathlib

    from nsladv import datasets as data

    data.load(data_dir=str(tmp_path / "tfds"))
    pipeline = str(pathlib.Path(__file__).parent / "tiny_pipeline.py")
    args = [pipeline, str(tmp_path / "run"), str(tmp_path / "saved_models"), str(tmp_path / "tfds")]
    result = subprocess.run([sys.executable, "-c", HARDEN_MIRRORED, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].endswith("saved_models/tiny/1")
    assert (tmp_path / "run" / "report.json").exists()


WORKER = textwrap.dedent(
    """
    import json, os, sys
    index, ports, mode, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
    if mode != "fit_one_device":
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        )
    if mode.startswith("fit"):
        import tensorflow as tf
        strategy = tf.distribute.get_strategy() if mode == "fit_one_device" else tf.distribute.MultiWorkerMirroredStrategy()
        import keras, numpy as np, nsladv
        with strategy.scope():
            keras.utils.set_random_seed(0)
            base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
            model = nsladv.wrap(base, epsilon=0.1, steps=2)
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        rng = np.random.default_rng(0)
        x, y = rng.random((64, 6)).astype("float32"), rng.integers(0, 3, 64)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        history = model.fit(dataset, epochs=2, verbose=0, validation_data=dataset, shuffle=False)
        print(json.dumps(history.history))
    else:
        sys.path.insert(0, sys.argv[8])
        from epoch_recorder import EpochRecorder
        from nsladv import load_pipeline
        from nsladv.jobs import harden as hardening
        recorder = EpochRecorder(os.path.join(out, f"epochs_{index}.txt"), int(sys.argv[7]) if index == 1 else -1)
        report = hardening.harden(load_pipeline(sys.argv[5]), strategy="multiworker", epochs=4,
                                  out_dir=os.path.join(out, "run"), saved_models=os.path.join(out, "saved_models"),
                                  data_dir=sys.argv[6], eval_examples=50, verbose=0, callbacks=[recorder])
        print(json.dumps({"export": report.get("export")}))
    """
)


def free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ",".join(ports)


def _errors(outputs):
    """The end of each worker's stderr, without TensorFlow's start-up chatter."""
    ends = []
    for index, (_, err) in enumerate(outputs):
        lines = [
            line for line in err.splitlines() if not line.startswith(("I0000", "W0000", "E0000", "WARNING: All log"))
        ]
        ends.append(f"worker {index}:\n" + "\n".join(lines[-25:]))
    return "\n".join(ends)


def launch(mode, out, *extra):
    ports = free_ports(2)
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), ports, mode, str(out), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_two_workers_train_like_one_device(tmp_path):
    workers = launch("fit", tmp_path)
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), _errors(outputs)
    histories = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert histories[0] == histories[1]
    # One process, one device, the same global batches of 16.
    single = subprocess.run(
        [sys.executable, "-c", WORKER, "0", "0", "fit_one_device", str(tmp_path)], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one_device = json.loads(single.stdout.strip().splitlines()[-1])
    for key in ("loss", "clean_loss", "neighbor_loss", "val_loss"):
        assert histories[0][key] == pytest.approx(one_device[key], rel=1e-4), key


@pytest.mark.slow
def test_a_killed_worker_is_recovered_from_the_last_backup_and_only_the_chief_exports(tmp_path):
    import pathlib
    import time

    from nsladv import datasets as data

    data.load(data_dir=str(tmp_path / "tfds"))
    pipeline = str(pathlib.Path(__file__).parent / "tiny_pipeline.py")
    workers = launch("harden", tmp_path, pipeline, str(tmp_path / "tfds"), "1", str(pathlib.Path(__file__).parent))
    workers[1].wait(timeout=300)
    assert workers[1].returncode == -9
    time.sleep(2)
    workers[0].kill()  # The chief waits for its peer in a collective: the cluster restarts.
    assert (tmp_path / "epochs_0.txt").read_text().split() in (["0", "1"], ["0", "1", "2"])
    workers[0].wait(timeout=60)
    assert (tmp_path / "epochs_1.txt").read_text().split() == ["0", "1"]
    workers = launch("harden", tmp_path, pipeline, str(tmp_path / "tfds"), "-1", str(pathlib.Path(__file__).parent))
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), _errors(outputs)
    # Worker 1 died at the end of epoch 1, after the validation pass both
    # workers share; the chief then saved epoch 1 and waited in epoch 2. The
    # restarted cluster resumes at epoch 2 everywhere: no epoch lost or redone.
    assert (tmp_path / "epochs_1.txt").read_text().split() == ["0", "1", "2", "3"]
    assert (tmp_path / "epochs_0.txt").read_text().split() in (["0", "1", "2", "3"], ["0", "1", "2", "2", "3"])
    exports = [json.loads(out.strip().splitlines()[-1])["export"] for out, _ in outputs]
    assert exports[0].endswith("saved_models/tiny/1") and exports[1] is None
    assert [p.name for p in (tmp_path / "saved_models" / "tiny").iterdir()] == ["1"]
