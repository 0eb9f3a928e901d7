"""Evaluations kept block by block: a run killed at any moment and resumed gives the straight run's answer."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from nsladv.errors import SettingsError
from nsladv.robustness import FGSM
from nsladv.robustness import Square
from nsladv.robustness import apgd_ce
from nsladv.robustness import evaluate_robustness


def linear_model(w):
    """A linear classifier of 4x4 one-channel images (Square attacks images)."""
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4, use_bias=False)])
    model.set_weights([w])
    return model


def linear_problem(n=200, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(16, 4)).astype("float32")
    x = rng.random((n, 4, 4, 1)).astype("float32")
    return linear_model(w), x, np.argmax(x.reshape(n, -1) @ w, 1)


ATTACKS = [FGSM, apgd_ce(steps=20), Square(queries=60, clip_range=(0.0, 1.0))]
SETTINGS = dict(epsilons=[0.05, 0.1], attacks=ATTACKS, large_epsilon=0.5, black_box_retry=None)


def comparable(result):
    """What two runs must agree on, digit for digit."""
    keys = ("clean_accuracy", "worst_case", "not_robust_examples", "after_each_attack", "large_epsilon")
    return {k: result[k] for k in keys} | {name: a["fooled"] for name, a in result["attacks"].items()}


class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_straight_runs_answer(tmp_path):
    model, x, y = linear_problem()
    straight = evaluate_robustness(model, (x, y), checkpoint_dir=tmp_path / "straight", block_size=32, **SETTINGS)
    assert 0 < straight.worst_case_at(0.1) < straight.worst_case_at(0.05) < 1  # attacks that fool some, not all
    blocks = []

    def stop_after_five(*block):
        blocks.append(block)
        if len(blocks) == 5:
            raise Stop()  # killed in the middle of an attack

    with pytest.raises(Stop):
        evaluate_robustness(
            model, (x, y), checkpoint_dir=tmp_path / "run", block_size=32, on_block=stop_after_five, **SETTINGS
        )
    resumed = evaluate_robustness(model, (x, y), checkpoint_dir=tmp_path / "run", block_size=32, **SETTINGS)
    assert resumed["checkpoints"]["blocks_reused"] == 5
    assert comparable(resumed) == comparable(straight)
    again = evaluate_robustness(model, (x, y), checkpoint_dir=tmp_path / "run", block_size=32, **SETTINGS)
    assert comparable(again) == comparable(straight) and again["checkpoints"]["blocks_reused"] > 5
    assert again["seconds"] == resumed["seconds"]  # compute seconds summed over the runs that made the blocks
    # Each block reports the digits its attack still has left, and their time.
    key, epsilon, block, digits, left, seconds_left = blocks[0]
    assert key == "0-fgsm" and epsilon == 0.05 and block == 0 and digits == 32 and left == len(y) - 32
    assert seconds_left >= 0


def test_a_folder_of_another_evaluation_is_refused_with_what_differs(tmp_path):
    model, x, y = linear_problem(n=40)
    evaluate_robustness(model, (x, y), checkpoint_dir=tmp_path, block_size=16, **SETTINGS)
    with pytest.raises(SettingsError, match=r"differs in: epsilons\)"):
        evaluate_robustness(model, (x, y), checkpoint_dir=tmp_path, block_size=16, **{**SETTINGS, "epsilons": [0.2]})
    with pytest.raises(SettingsError, match=r"differs in: model\)"):
        other, _, _ = linear_problem(n=40, seed=2)
        evaluate_robustness(other, (x, y), checkpoint_dir=tmp_path, block_size=16, **SETTINGS)
    with pytest.raises(SettingsError, match=r"differs in: block_size, examples\)"):
        evaluate_robustness(model, (x[:20], y[:20]), checkpoint_dir=tmp_path, block_size=8, **SETTINGS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["epsilons"] == [0.05, 0.1] and manifest["block_size"] == 16  # untouched by the refusals


SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import numpy as np
    from test_robustness_checkpoints import linear_model
    from nsladv.robustness import FGSM, Square, apgd_ce, evaluate_robustness

    folder, out = sys.argv[1], sys.argv[2]
    with np.load(os.path.join(os.path.dirname(folder), "problem.npz")) as p:
        w, x, y = p["w"], p["x"], p["y"]
    model = linear_model(w)
    result = evaluate_robustness(
        model, (x, y), epsilons=[0.05, 0.1], attacks=[FGSM, apgd_ce(steps=40), Square(queries=200)],
        large_epsilon=0.5, black_box_retry=None, checkpoint_dir=folder, block_size=25,
    )
    keys = ("worst_case", "not_robust_examples", "after_each_attack", "large_epsilon", "checkpoints")
    open(out, "w").write(__import__("json").dumps({k: result[k] for k in keys}))
    """
)


def test_a_process_killed_at_a_random_moment_resumes_to_the_same_answer(tmp_path):
    """SIGKILL, not an exception: the files kept are whole, and the rerun gives the straight run's answer."""
    _, x, y = linear_problem(n=300, seed=3)
    w = np.random.default_rng(3).normal(size=(16, 4)).astype("float32")
    np.savez(tmp_path / "problem.npz", w=w, x=x, y=y)
    (tmp_path / "run.py").write_text(SCRIPT)
    tests = str(pathlib.Path(__file__).parent)
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])
    )

    def run(folder, out, kill_after_blocks=None):
        process = subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), str(tmp_path / folder), str(tmp_path / out)], env=env
        )
        if kill_after_blocks is None:
            assert process.wait(timeout=600) == 0
            return json.loads((tmp_path / out).read_text())
        deadline = time.monotonic() + 600
        while len(list((tmp_path / folder).rglob("block*.npz"))) < kill_after_blocks:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return None

    straight = run("straight", "straight.json")
    run("killed", "unused.json", kill_after_blocks=int(np.random.default_rng().integers(3, 30)))
    kept = len(list((tmp_path / "killed").rglob("block*.npz")))
    resumed = run("killed", "resumed.json")
    assert 0 < resumed["checkpoints"]["blocks_reused"] >= kept - 1  # a block being written may be lost, no more
    assert {k: v for k, v in resumed.items() if k != "checkpoints"} == {
        k: v for k, v in straight.items() if k != "checkpoints"
    }
