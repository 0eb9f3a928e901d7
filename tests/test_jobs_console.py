"""What a person watching a job sees: no start-up noise, phases with an estimate, progress with the time left, and
a log file that reads as lines."""

import io
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import nsladv
from nsladv.jobs import console
from nsladv.robustness import Square
from nsladv.robustness import attack_set

HERE = pathlib.Path(__file__).parent


def test_startup_noise_is_filtered_and_everything_else_kept():
    shown = io.StringIO()
    with console.startup_noise_filtered(shown):
        os.write(2, b"I0000 00:00:17 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n")
        os.write(2, b"a warning that matters\n")
    assert shown.getvalue() == "a warning that matters\n"


def test_what_was_kept_is_shown_even_when_the_block_fails():
    shown = io.StringIO()
    with pytest.raises(RuntimeError), console.startup_noise_filtered(shown):
        os.write(2, b"before the failure\n")
        raise RuntimeError("boom")
    assert shown.getvalue() == "before the failure\n"


def test_progress_in_a_log_is_a_line_with_the_time_left_while_a_long_attack_runs():
    now = [0.0]
    shown = io.StringIO()
    progress = console.AttackProgress(stream=shown, live=False, every=30, clock=lambda: now[0])
    progress("square", 0.3, 0, 1000)
    for done, at in ((100, 10.0), (400, 40.0), (500, 50.0), (1000, 100.0)):
        now[0] = at
        progress("square", 0.3, done, 1000)
    # One line: at 40 s (30 s after the start); 50 s is too soon after it; the end is the evaluation's own line.
    assert shown.getvalue() == "  square at 0.3: 400/1000 examples attacked in 40 s, about 1 min 00 s left\n"


@pytest.mark.parametrize("seconds, text", [(42.4, "42 s"), (185, "3 min 05 s"), (4320, "1 h 12 min")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert console.duration(seconds) == text


def test_attack_progress_batch_by_batch_changes_no_result():
    rng = np.random.default_rng(0)
    x = rng.random((45, 4, 4, 1), dtype=np.float32)
    y = (x.reshape(45, -1)[:, :8].sum(1) > x.reshape(45, -1)[:, 8:].sum(1)).astype(np.int64)
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    attacks = (*attack_set("quick"), Square(queries=300))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)  # 5 batches
    calls = []
    plain = nsladv.evaluate_robustness(model, data, epsilons=[0.05, 0.2], attacks=attacks)
    followed = nsladv.evaluate_robustness(
        model, data, epsilons=[0.05, 0.2], attacks=attacks, step_progress=lambda *step: calls.append(step)
    )
    drop = ("seconds",)
    assert {k: v for k, v in plain.items() if k not in drop} == {k: v for k, v in followed.items() if k not in drop}
    # FGSM attacks the examples the model gets right clean, in batches of the dataset's 10.
    correct = round(plain["clean_accuracy"] * 45)
    fgsm = [c[2:] for c in calls if c[:2] == ("fgsm", 0.05)]
    assert fgsm == [(0, correct)] + [(min(d, correct), correct) for d in range(10, correct + 10, 10)]


@pytest.mark.slow
def test_a_job_logged_to_a_file_reads_as_lines_with_its_phases(tmp_path, data_dir):
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "nsladv.jobs.cli", "harden", str(HERE / "tiny_pipeline.py")]
            + ["--eval-examples", "50", "--data-dir", data_dir, "--out", str(tmp_path / "run")]
            + ["--name", "logged", "--epsilon", "1/10"]  # flags whose checks load TensorFlow
            + ["--saved-models", str(tmp_path / "saved_models")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"},  # the noise is filtered, not merely not printed
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b[" not in text  # no progress bars redrawn in place, no terminal colours
    assert "cuInit" not in text and "absl::InitializeLog" not in text and "cpu_feature_guard" not in text
    lines = text.splitlines()
    assert any(line.startswith("logged: 6 phases, about ") and "on this machine" in line for line in lines)
    for number, phase in enumerate(("training the hardened", "training the undefended", "white-box evaluation"), 1):
        assert any(line.startswith(f"[{number}/6] {phase}") for line in lines), phase
    assert any(line.startswith("15/15 - ") for line in lines)  # Keras' one line per epoch
