"""The harden job end to end on a tiny budget, resume after a kill, the CLI's errors."""

import gc
import json
import pathlib
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import serving_helpers
import tensorflow as tf

from nsladv import datasets as data
from nsladv import export
from nsladv import load_pipeline
from nsladv.datasets import loading
from nsladv.errors import RunExistsError
from nsladv.errors import SettingsError
from nsladv.errors import TrainingDivergedError
from nsladv.jobs import cli
from nsladv.jobs import harden as hardening
from nsladv.serving import Server

HERE = pathlib.Path(__file__).parent
TINY = str(HERE / "tiny_pipeline.py")

pytestmark = pytest.mark.slow


def test_harden_end_to_end(tmp_path, data_dir):
    report = hardening.harden(
        load_pipeline(TINY),
        out_dir=tmp_path / "run",
        saved_models=tmp_path / "saved_models",
        data_dir=data_dir,
        eval_examples=200,
        verbose=0,
        log=lambda *_: None,
    )
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert set(written["evaluations"]) == {"hardened", "baseline"}
    hardened = written["evaluations"]["hardened"]
    assert hardened["examples"] == 200 and set(hardened["attacks"]) == {"fgsm", "pgd5"}
    assert set(hardened["attacks"]["pgd5"]["accuracy"]) == {"0.1", "0.3"}
    assert written["versions"]["tensorflow"].startswith("2.21")
    assert written["pipeline"]["threat"]["epsilon"] == 0.1
    assert {"train_hardened_seconds", "evaluate_hardened_seconds"} <= set(written["timings"])
    assert (tmp_path / "run" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "# Model card: tiny" in card and "**hardened**" in card and "**baseline**" in card
    assert "linf ball of radius 0.1" in card and hardened["test_examples"] == 200
    export = pathlib.Path(written["export"])
    assert export == tmp_path / "saved_models" / "tiny" / "1"
    metadata = json.loads((export / "assets.extra" / "nsladv_metadata.json").read_text())
    assert metadata["robustness"]["clean_accuracy"] == hardened["clean_accuracy"]
    assert (tmp_path / "saved_models" / "models.config").exists()
    assert list((tmp_path / "run" / "logs" / "hardened").rglob("events.out.tfevents.*"))
    # The adversarial training's monitor: PGD-10 on 500 validation digits after each epoch, the best one kept.
    (epoch,) = written["training"]["hardened"]["epochs"]
    assert set(written["training"]) == {"hardened"} and written["training"]["hardened"]["best_epoch"] == 0
    assert written["training"]["hardened"]["monitor"]["examples"] == 500 and 0 <= epoch["robust_accuracy"] <= 1
    assert written["export_matches_the_evaluated_model_on"] == 200


def test_harden_a_users_saved_model(tmp_path, data_dir):
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    path = tmp_path / "user.keras"
    keras.Model(inputs, outputs).save(path)
    report = hardening.harden(
        load_pipeline(TINY),
        model_path=path,
        out_dir=tmp_path / "run",
        saved_models=tmp_path / "sm",
        data_dir=data_dir,
        baseline=False,
        eval_examples=100,
        verbose=0,
        log=lambda *_: None,
    )
    assert report["model"] == str(path) and set(report["evaluations"]) == {"hardened"}
    signature = tf.saved_model.load(report["export"]).signatures["serving_default"]
    probabilities = signature(image=tf.zeros((2, 28, 28, 1)))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # softmax output kept as is


RESUMABLE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[6])
    from epoch_recorder import EpochRecorder
    from nsladv import load_pipeline
    from nsladv.jobs import assembly
    from nsladv.jobs import harden as hardening

    hardening.harden(load_pipeline(sys.argv[1]), epochs=4, out_dir=sys.argv[4], baseline=False,
                     export=False, eval_examples=50, data_dir=sys.argv[5], verbose=0,
                     callbacks=[EpochRecorder(sys.argv[2], int(sys.argv[3]))])
    """
)


def test_a_killed_training_resumes_from_its_last_epoch(tmp_path, data_dir):
    epochs = tmp_path / "epochs.txt"
    args = [sys.executable, "-c", RESUMABLE, TINY, str(epochs)]
    run = [str(tmp_path / "run"), data_dir, str(HERE)]
    killed = subprocess.run(args + ["2"] + run, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # Killed at the end of epoch 2, before its backup: epochs 0 and 1 are saved.
    assert epochs.read_text().split() == ["0", "1", "2"]
    finished = subprocess.run(args + ["-1"] + run, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert epochs.read_text().split() == ["0", "1", "2", "2", "3"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # The robustness monitor's readings go on across the kill: epoch 2 read again, epochs 0 and 1 kept.
    assert [h["epoch"] for h in report["training"]["hardened"]["epochs"]] == [0, 1, 2, 3]
    assert not (tmp_path / "run" / "backup" / "hardened").exists()


PHASES = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[5])
    from epoch_recorder import EpochRecorder, die
    from nsladv import load_pipeline
    from nsladv.jobs import assembly
    from nsladv.jobs import harden as hardening

    phase, log_path = sys.argv[1], sys.argv[2]
    callbacks = [EpochRecorder(log_path + ".epochs", 0 if phase == "baseline" else -1, only="plain")]
    if phase == "evaluate":  # after the hardened model's evaluation, during the baseline's
        evaluate, calls = assembly.evaluate_robustness, []
        def evaluate_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                die()
            return evaluate(*args, **kwargs)
        assembly.evaluate_robustness = evaluate_then_die
    if phase == "report":  # report.json written, the plot not
        hardening.report_lib.plot_robustness = lambda *args, **kwargs: die()
    if phase == "export":
        import nsladv.export
        nsladv.export.export_model = lambda *args, **kwargs: die()

    with open(log_path, "a") as log:
        print(f"--- {phase}", file=log, flush=True)
        hardening.harden(load_pipeline(sys.argv[3]), epochs=2, out_dir=sys.argv[4] + "/run",
                         saved_models=sys.argv[4] + "/saved_models", eval_examples=50, data_dir=sys.argv[6],
                         verbose=0, callbacks=callbacks, log=lambda line: print(line, file=log, flush=True))
    """
)


def test_a_rerun_after_a_kill_in_any_phase_picks_up_at_the_first_unfinished_one(tmp_path, data_dir):
    log = tmp_path / "log.txt"

    def run(phase):
        done = subprocess.run(
            [sys.executable, "-c", PHASES, phase, str(log), TINY, str(tmp_path), str(HERE), data_dir],
            capture_output=True,
            text=True,
        )
        expected = 0 if phase == "complete" else -signal.SIGKILL
        assert done.returncode == expected, done.stderr[-3000:]
        return log.read_text().split("--- ")[-1]

    said = run("baseline")  # killed after the baseline's first epoch
    assert "training the hardened model" in said and "training the undefended baseline" in said
    said = run("evaluate")
    assert "training the hardened model" not in said and "trained by an earlier run" in said
    # Killed at the end of its first epoch, before the backup saved it: the baseline trains from epoch 0 again.
    assert "training the undefended baseline" in said
    assert (tmp_path / "log.txt.epochs").read_text().split() == ["0", "0", "1"]
    assert "evaluation of the hardened model" in said and "evaluation of the baseline model" in said
    said = run("report")
    assert "training" not in said and "evaluation of the hardened model" not in said
    assert "evaluation of the baseline model" in said
    assert (tmp_path / "run" / "report.json").exists() and not (tmp_path / "run" / "robustness.png").exists()
    said = run("export")
    assert "training" not in said and "white-box evaluation" not in said and "report:" in said
    assert "export" not in json.loads((tmp_path / "run" / "report.json").read_text())  # the report came first
    said = run("complete")
    assert "training" not in said and "white-box evaluation" not in said and "exported for TF Serving:" in said
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["export"] == str(tmp_path / "saved_models" / "tiny" / "1")
    assert set(report["timings"]) == {
        "train_hardened_seconds",
        "train_baseline_seconds",
        "evaluate_hardened_seconds",
        "evaluate_baseline_seconds",
    }
    said = run("complete")  # Nothing left to do: the same export, no new version.
    assert "exported for TF Serving by an earlier run" in said
    assert sorted(p.name for p in (tmp_path / "saved_models" / "tiny").iterdir()) == ["1"]


def test_a_rerun_with_other_training_settings_stops_unless_told_to_overwrite(tmp_path, data_dir):
    kwargs = dict(
        out_dir=tmp_path / "run", data_dir=data_dir, baseline=False, export=False, eval_examples=50, verbose=0
    )
    lines = []
    hardening.harden(load_pipeline(TINY), log=lines.append, **kwargs)
    lines.clear()
    hardening.harden(load_pipeline(TINY), log=lines.append, **kwargs)
    assert not any("training the" in line for line in lines) and not any("white-box" in line for line in lines)
    lines.clear()
    hardening.harden(load_pipeline(TINY).replace(eval_epsilons=(0.2,)), log=lines.append, **kwargs)
    assert not any("training the" in line for line in lines) and any("white-box" in line for line in lines)
    lines.clear()
    with pytest.raises(RunExistsError, match=r"other settings \(learning_rate: 0\.001 -> 0\.01\); its trained models"):
        hardening.harden(load_pipeline(TINY).replace(learning_rate=0.01), log=lines.append, **kwargs)
    assert not lines and (tmp_path / "run" / "models" / "hardened.weights.h5").is_file()
    hardening.harden(load_pipeline(TINY).replace(learning_rate=0.01), log=lines.append, overwrite=True, **kwargs)
    assert any("the earlier run's trained models" in line for line in lines)
    assert any("training the hardened model" in line for line in lines)


def test_a_diverging_training_stops_with_an_error_that_names_the_epoch(tmp_path, data_dir):
    pipeline = load_pipeline(TINY).replace(learning_rate=1e30, epochs=3)
    with pytest.raises(
        TrainingDivergedError,
        match=r"Training the hardened model diverged: loss=nan at epoch 1 of 3\. Try a lower learning rate",
    ):
        hardening.harden(
            pipeline,
            out_dir=tmp_path / "run",
            data_dir=data_dir,
            baseline=False,
            eval_examples=50,
            verbose=0,
            log=lambda *_: None,
        )
    assert not (tmp_path / "run" / "report.json").exists()


def _writes_into(folder):
    """Run and export folders under the test's own: a model that wrongly passed a check must not write into the repo."""
    return ["--out", str(folder / "run"), "--saved-models", str(folder / "saved_models")]


def run_cli(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_cli_unknown_pipeline(capsys):
    code, out = run_cli(["harden", "nope"], capsys)
    assert (
        code == 2
        and "nsladv: error: Unknown pipeline 'nope'. Available: fashion_mnist, mnist, mnist_graph; or" in out.err
    )


@pytest.mark.parametrize(
    "source, message",
    [
        ("import nsladv\nPIPELINE = nsladv.Pipeline(name='x', build_model=len,\n", "SyntaxError: '(' was never closed"),
        ("import nsladv_missing_package\n", "ModuleNotFoundError: No module named 'nsladv_missing_package'"),
        (
            "import nsladv\n\nPIPELINE = nsladv.Pipeline(name='x', build_model=len,\n"
            "    threat=nsladv.ThreatModel(epsilon=-1))\n",
            "`epsilon` must be a finite number > 0. Received: epsilon=-1",
        ),
        ("import nsladv\nPIPELINE = nsladv.Pipeline(name='a/b', build_model=len)\n", "The model name must be letters"),
        ("PIPELINE = 3\n", "must define PIPELINE = nsladv.Pipeline(...). Received: PIPELINE=3"),
    ],
    ids=["syntax", "import", "settings", "name", "no_pipeline"],
)
def test_cli_broken_pipeline_file_is_one_line(source, message, capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(source)
    code, out = run_cli(["harden", str(path)], capsys)
    assert code == 2 and message in out.err and "Traceback" not in out.err
    if "PIPELINE = 3" not in source:
        assert f"{path}, line" in out.err  # where to look
    code, out = run_cli(["--debug", "harden", str(path)], capsys)
    assert code == 2 and "Traceback" in out.err and message in out.err


def test_cli_pipeline_name_that_is_no_module(capsys):
    code, out = run_cli(["harden", "foo.bar"], capsys)
    assert (
        code == 2
        and out.err.strip().startswith("nsladv: error: Unknown pipeline 'foo.bar'")
        and "Traceback" not in out.err
    )


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(hardening, "harden", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["harden", TINY])


@pytest.mark.parametrize("command", ["harden", "tune", "serve", "pipelines"])
def test_cli_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"nsladv {command}" in out


def test_cli_overrides_reach_the_report(tmp_path, data_dir, capsys):
    argv = [
        "harden",
        TINY,
        "--data-dir",
        data_dir,
        "--out",
        str(tmp_path / "run"),
        "--no-export",
        "--no-baseline",
        "--eval-examples",
        "50",
        "--quiet",
        "--seed",
        "3",
        "--epsilon",
        "0.2",
        "--steps",
        "2",
        "--multiplier",
        "0.7",
        "--batch-size",
        "512",
        "--learning-rate",
        "0.003",
        "--distance",
        "label",
        "--ema-momentum",
        "0.9",
        "--eval-split",
        "validation",
    ]
    code, _ = run_cli(argv, capsys)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 0 and report["overrides"] == {
        "seed": 3,
        "epsilon": 0.2,
        "steps": 2,
        "multiplier": 0.7,
        "batch_size": 512,
        "learning_rate": 0.003,
        "distance": "label",
        "ema_momentum": 0.9,
        "eval_split": "validation",
    }
    pipeline = report["pipeline"]
    assert pipeline["regularization"]["distance"] == "label" and pipeline["ema_momentum"] == 0.9
    assert pipeline["eval_split"] == "validation" and report["evaluations"]["hardened"]["examples"] == 50
    assert "examples of mnist_offline (validation)" in (tmp_path / "run" / "model_card.md").read_text()
    assert (pipeline["seed"], pipeline["batch_size"], pipeline["learning_rate"]) == (3, 512, 0.003)
    assert pipeline["threat"]["epsilon"] == 0.2 and pipeline["threat"]["steps"] == 2
    assert pipeline["regularization"]["multiplier"] == 0.7


def test_pipeline_overrides_keep_the_steps_travel():
    import nsladv

    threat = nsladv.ThreatModel(epsilon=0.3, steps=5, step_size=0.1, random_start=True, clip_range=(0.0, 1.0))
    pipeline = load_pipeline(TINY).replace(threat=threat)  # PGD-5, step 0.1 at epsilon 0.3
    changed = pipeline.with_overrides(epsilon=0.15, steps=10)
    assert changed.threat.epsilon == 0.15 and changed.threat.steps == 10
    assert changed.threat.step_size == pytest.approx(0.1 / 0.3 * 5 / 10 * 0.15)
    assert pipeline.with_overrides() == pipeline
    assert pipeline.with_overrides(ema_momentum=0.99).ema_momentum == 0.99
    assert pipeline.with_overrides(ema_momentum=0.99).with_overrides(ema_momentum=0).ema_momentum is None
    both = pipeline.with_overrides(distance="kl", multiplier=6.0)
    assert (both.regularization.distance, both.regularization.multiplier) == ("kl", 6.0)


def test_cli_distances_are_the_library_s():
    from nsladv.configs import DISTANCES

    parser = cli._parser()
    for distance in DISTANCES:
        assert parser.parse_args(["harden", "--distance", distance]).distance == distance
    with pytest.raises(SystemExit):
        parser.parse_args(["harden", "--distance", "hinge"])
    with pytest.raises(SystemExit):
        parser.parse_args(["harden", "--ema-momentum", "1"])


def test_cli_version(capsys):
    import nsladv

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"nsladv {nsladv.__version__}"


def test_cli_missing_pipeline_file(capsys):
    code, out = run_cli(["harden", "missing.py"], capsys)
    assert code == 2 and "No pipeline file at missing.py" in out.err


def test_cli_missing_model_file(capsys, tmp_path, data_dir):
    code, out = run_cli(
        ["harden", TINY, "--model", str(tmp_path / "none.keras"), "--data-dir", data_dir, *_writes_into(tmp_path)],
        capsys,
    )
    assert code == 2 and "Expected a saved Keras model file (.keras)" in out.err and "(no such file)" in out.err


def _flat_dense(classes, activation=None):
    return lambda inputs: keras.layers.Dense(classes, activation=activation)(keras.layers.Flatten()(inputs))


@pytest.mark.parametrize(
    "input_shape, head, message",
    [
        (
            (32, 32, 3),
            _flat_dense(10),
            "expected images of shape (32, 32, 3) (the model's input). Received: images of shape (28, 28, 1) from "
            "mnist_offline",
        ),
        (
            (28, 28, 1),
            _flat_dense(3),
            "one score per class: shape (batch, 10), as mnist_offline has labels 0-9. Received: output (batch, 3)",
        ),
        (
            (28, 28, 1),
            lambda inputs: keras.layers.Dense(10)(inputs),
            "one score per class: shape (batch, 10), as mnist_offline has labels 0-9. Received: output "
            "(batch, 28, 28, 10)",
        ),
        ((28, 28, 1), _flat_dense(10, "sigmoid"), "The model ends in a sigmoid, which scores each class on its own"),
    ],
    ids=["input_shape", "classes", "per_pixel_scores", "sigmoid"],
)
def test_cli_model_that_does_not_fit_the_data(capsys, tmp_path, data_dir, input_shape, head, message):
    inputs = keras.Input(input_shape)
    path = tmp_path / "mismatch.keras"
    keras.Model(inputs, head(inputs)).save(path)
    code, out = run_cli(["harden", TINY, "--model", str(path), "--data-dir", data_dir, *_writes_into(tmp_path)], capsys)
    assert code == 2 and message in out.err and "Traceback" not in out.err


def test_cli_dataset_that_cannot_be_had(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_network_available", lambda timeout=3.0: False)
    code, out = run_cli(["harden", "fashion_mnist", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "Dataset 'fashion_mnist' is not prepared" in out.err and "'mnist_offline'" in out.err


@pytest.mark.parametrize(
    "argv, message",
    [(["harden", "--epochs", "0"], "expected a whole number >= 1, received '0'"), (["deploy"], "invalid choice")],
)
def test_cli_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_lists_pipelines(capsys):
    code, out = run_cli(["pipelines"], capsys)
    assert code == 0 and out.out.startswith("fashion_mnist") and "mnist " in out.out


def test_cli_serve_without_models(capsys, tmp_path):
    code, out = run_cli(["serve", str(tmp_path / "none"), "--rest-port", "0", "--grpc-port", "0"], capsys)
    assert code == 2 and "No saved models at" in out.err


def test_cli_serve_freezes_the_loaded_heap_and_thaws_it_when_it_stops(capsys, tmp_path, monkeypatch):
    """`nsladv serve` is a process of its own: it serves with `freeze_heap` (see the serving test)."""
    export.export_model(serving_helpers.classifier(0), tmp_path, "tiny", input_shape=serving_helpers.SHAPE)
    seen = {}

    def wait(self):
        seen.update(frozen=gc.get_freeze_count(), tracked=len(gc.get_objects()))
        raise KeyboardInterrupt

    monkeypatch.setattr(Server, "wait", wait)
    code, out = run_cli(["serve", str(tmp_path), "--rest-port", "0", "--grpc-port", "0"], capsys)
    assert code == 0 and "serving tiny" in out.out
    assert seen["frozen"] > 10 * seen["tracked"]
    assert gc.get_freeze_count() == 0


def test_cli_serve_refuses_what_tf_serving_refuses_to_start_with(capsys, tmp_path):
    (tmp_path / "models.config").write_text(
        'model_config_list { config { name: "mnist" base_path: "/models/mnist" model_platform: "tensorflow" } }'
    )
    argv = ["serve", "--model_config_file", str(tmp_path / "models.config"), "--rest-port", "0", "--grpc-port", "0"]
    code, out = run_cli(argv, capsys)
    assert code == 2 and "Could not find base path /models/mnist for servable mnist" in out.err
    code, out = run_cli(["serve", str(tmp_path), *argv[1:]], capsys)
    assert code == 2 and "Give one of a folder, --model_config_file and --model_base_path" in out.err
    (tmp_path / "monitoring.config").write_text("prometheus_config { enabled: true }")
    code, out = run_cli(
        ["serve", str(tmp_path), "--monitoring_config_file", str(tmp_path / "monitoring.config")], capsys
    )
    assert code == 2 and "Unknown or malformed field enabled" in out.err


def test_harden_in_bfloat16_evaluates_and_exports_float32(tmp_path, data_dir):
    report = hardening.harden(
        load_pipeline(TINY).replace(epochs=3),
        precision="bfloat16",
        out_dir=tmp_path / "run",
        saved_models=tmp_path / "sm",
        data_dir=data_dir,
        baseline=False,
        eval_examples=100,
        verbose=0,
        log=lambda *_: None,
    )
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert report["precision"]["training"] == "bfloat16" and report["precision"]["why"] == "asked for"
    assert report["precision"]["evaluation_and_export"] == "float32"
    signature = tf.saved_model.load(report["export"]).signatures["serving_default"]
    assert signature(image=tf.zeros((2, 28, 28, 1)))["logits"].dtype == tf.float32
    # The reported clean accuracy is the shipped model's on the same 100 digits, counted here by hand.
    images, labels = data.as_arrays(data.spread(data.load(data_dir=data_dir).test, 100))
    predicted = signature(image=tf.constant(images))["class_ids"].numpy().reshape(-1)
    clean = report["evaluations"]["hardened"]["clean_accuracy"]
    assert clean == np.mean(predicted == labels) and clean > 0.3  # well above chance: 3 epochs of 15 steps


def test_graph_pipeline_end_to_end(tmp_path, data_dir):
    """Few labels + a graph: the graph model, the same model without it, the baseline, side by side."""
    report = hardening.harden(
        load_pipeline(str(HERE / "tiny_graph_pipeline.py")),
        out_dir=tmp_path / "run",
        saved_models=tmp_path / "saved_models",
        data_dir=data_dir,
        eval_examples=100,
        verbose=0,
        log=lambda *_: None,
    )
    assert list(report["evaluations"]) == ["hardened", "without_graph", "baseline"]
    graph = report["graph"]
    assert graph["nodes"] == 3600 and graph["labelled"] == 50 and graph["edges"] > 0
    assert graph["training_rows"] > graph["nodes"]  # every image, the labelled ones repeated
    assert 0.5 < graph["neighbor_label_agreement"] <= 1.0
    assert (
        report["pipeline"]["labels_per_class"] == 5
        and report["pipeline"]["graph"]["regularization"]["distance"] == "kl"
    )
    assert {"train_hardened_seconds", "train_without_graph_seconds", "train_baseline_seconds"} <= set(report["timings"])
    table = hardening.report_lib.summary_table(report["evaluations"])
    assert "without_graph" in table
    reloaded = tf.saved_model.load(report["export"])
    images = next(iter(data.load(data_dir=data_dir).test.batch(3)))[0]
    assert reloaded.signatures["serving_default"](image=images)["logits"].shape == (3, 10)


def test_graph_pipeline_data_gives_both_models_the_same_batches(data_dir):
    # Random shifts are drawn independently in the two pipelines; the rows, labels and weights are the same.
    pipeline = load_pipeline(str(HERE / "tiny_graph_pipeline.py")).replace(shift_augmentation=0)
    found = hardening.pipeline_data(pipeline, data_dir=data_dir)
    for _ in range(2):  # Two epochs: the graph model trains on all of its epochs before the plain one starts.
        for with_neighbors, (images, labels, weights) in zip(found.train, found.plain_train, strict=True):
            np.testing.assert_array_equal(with_neighbors[0]["image"], images)
            np.testing.assert_array_equal(with_neighbors[1], labels)
            np.testing.assert_array_equal(with_neighbors[2], weights)
    first, _, weights = next(iter(found.train))
    assert "NL_nbr_1_image" in first and first["NL_nbr_1_weight"].shape == (256, 1)
    assert set(np.unique(weights.numpy() > 0)) == {True, False}  # labelled and unlabelled rows


def test_graph_pipeline_settings_are_checked():
    import nsladv

    build = load_pipeline(TINY).build_model
    with pytest.raises(
        ValueError, match=r"`labels_per_class` must be an integer >= 1 or None. Received: labels_per_class=0"
    ):
        nsladv.Pipeline(build_model=build, labels_per_class=0)
    with pytest.raises(ValueError, match=r"needs `regularization=nsladv.GraphRegularization\(..., max_neighbors=K\)`"):
        nsladv.GraphSetup(regularization=nsladv.GraphRegularization())


def test_pipeline_warmups_take_fractions_of_an_epoch_and_refuse_the_rest():
    import nsladv

    build = load_pipeline(TINY).build_model
    assert nsladv.Pipeline(build_model=build, epsilon_warmup_epochs=0.5).epsilon_warmup_epochs == 0.5
    for name, value in (
        ("epsilon_warmup_epochs", -1),
        ("multiplier_warmup_epochs", "2"),
        ("epsilon_warmup_epochs", True),
    ):
        with pytest.raises(ValueError, match=rf"`{name}` must be a number of epochs >= 0. Received: {name}={value!r}"):
            nsladv.Pipeline(build_model=build, **{name: value})


def test_full_evaluation_is_one_flag(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(hardening, "harden", lambda pipeline, **kwargs: seen.update(pipeline=pipeline, **kwargs))
    assert cli.main(["harden", TINY, "--full-evaluation"]) == 0
    pipeline = seen["pipeline"]
    assert [a.name for a in pipeline.eval_attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # AutoAttack's
    assert [a.target_classes for a in pipeline.eval_attacks[1:3]] == [9, 9] and pipeline.eval_attacks[3].queries == 5000
    assert pipeline.eval_examples is None and seen["eval_examples"] is None  # all 10,000 test digits
    code, out = run_cli(["harden", TINY, "--full-evaluation", "--eval-examples", "100"], capsys)
    assert code == 2 and "--full-evaluation attacks the whole test split; drop --eval-examples" in out.err


def test_pipeline_weight_averaging_is_checked_and_reaches_the_optimizer():
    import nsladv

    build = load_pipeline(TINY).build_model
    optimizer = nsladv.Pipeline(build_model=build, ema_momentum=0.99).optimizer(steps_per_epoch=10)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.99
    assert not nsladv.Pipeline(build_model=build).optimizer(steps_per_epoch=10).use_ema
    assert nsladv.Pipeline(build_model=build, ema_momentum=0.9).get_config()["ema_momentum"] == 0.9
    for value in (1.0, 0.0, "0.99", 1):
        with pytest.raises(
            ValueError, match=rf"`ema_momentum` must be a float in \(0, 1\) or None. Received: ema_momentum={value!r}"
        ):
            nsladv.Pipeline(build_model=build, ema_momentum=value)


class _AverageProbe(keras.callbacks.Callback):
    """After the monitor: the raw and averaged weights at each epoch's end, and the weights fit ends with."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def _average(self):
        return [v.numpy() for v in self.model.optimizer._model_variables_moving_average]

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append((self.model.get_weights(), self._average()))

    def on_train_end(self, logs=None):
        self.final, self.final_average = self.model.get_weights(), self._average()


def test_harden_with_weight_averaging_trains_on_the_raw_weights_and_ships_the_average(tmp_path, data_dir):
    probe, messages = _AverageProbe(), []
    report = hardening.harden(
        load_pipeline(TINY).replace(ema_momentum=0.9),
        out_dir=tmp_path / "run",
        saved_models=tmp_path / "sm",
        data_dir=data_dir,
        baseline=False,
        eval_examples=100,
        callbacks=[probe],
        verbose=0,
        log=messages.append,
    )
    assert report["pipeline"]["ema_momentum"] == 0.9
    assert any("keeping the weights' average (EMA 0.9)" in m for m in messages)
    ((raw, average),) = probe.ends
    assert max(np.abs(r - a).max() for r, a in zip(raw, average)) > 1e-4  # the callbacks after the monitor: raw
    for got, want in zip(probe.final, probe.final_average):  # one epoch, so kept: fit ends with the average
        np.testing.assert_array_equal(got, want)
    signature = tf.saved_model.load(report["export"]).signatures["serving_default"]
    images, _ = data.as_arrays(data.spread(data.load(data_dir=data_dir).test, 20))
    model = load_pipeline(TINY).build_model((28, 28, 1), 10)
    model.set_weights(probe.final)
    np.testing.assert_allclose(
        signature(image=tf.constant(images))["logits"].numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5
    )


def test_a_model_given_in_python_keeps_its_precision_unless_asked_otherwise(tmp_path, data_dir):
    """It trains in place: "auto" keeps its precision; an explicit other one is refused before any work."""
    model = load_pipeline(TINY).build_model((28, 28, 1), 10)
    with pytest.raises(SettingsError, match=r"built in \(float32\).*Received: precision='bfloat16' for a float32"):
        hardening.harden(
            TINY, model=model, precision="bfloat16", out_dir=tmp_path / "run", data_dir=data_dir, log=lambda *_: None
        )
    assert not (tmp_path / "run").exists()
