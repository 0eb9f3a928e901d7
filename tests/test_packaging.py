"""What a user installs: the built wheel, used from outside the repository, loads every bundled pipeline.

pytest runs from the repository root, where the top-level `pipelines/` folder is importable; a wheel installs it
as `nsladv.pipelines` only. These tests build the wheel, install it into a fresh folder and run from elsewhere.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BUNDLED = ("fashion_mnist", "mnist", "mnist_graph")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A folder holding nsladv installed from its wheel (its requirements come from this environment)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that setuptools' build/ folder lands there and not in the working tree.
    source = root / "source"
    ignored = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, source, ignore=ignored)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (root / "dist").glob("nsladv-*.whl")
    target = root / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return target


def run_installed(target, code, cwd):
    env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_wheel_ships_one_top_level_package_with_the_pipelines_inside(installed_wheel):
    # What pip puts beside the packages: the metadata, and the console script's bin/.
    tops = {p.name for p in installed_wheel.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin"}
    assert tops == {"nsladv"}
    for name in ("nsladv/pipelines/__init__.py", "nsladv/pipelines/mnist.py", "nsladv/jobs/cli.py"):
        assert (installed_wheel / name).is_file(), name


def test_every_bundled_pipeline_loads_from_the_installed_wheel(installed_wheel, tmp_path):
    code = (
        "import nsladv, sys\n"
        "from nsladv.jobs.pipeline import load_pipeline\n"
        f"assert nsladv.__file__.startswith({str(installed_wheel)!r}), nsladv.__file__\n"
        f"for name in {BUNDLED!r}:\n"
        "    print(name, load_pipeline(name).name)\n"
    )
    done = run_installed(installed_wheel, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [word for name in BUNDLED for word in (name, name)]


def test_nsladv_pipelines_lists_them_without_a_traceback(installed_wheel, tmp_path):
    done = run_installed(
        installed_wheel, "from nsladv.jobs.cli import main; raise SystemExit(main(['pipelines']))", tmp_path
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    listed = [line.split()[0] for line in done.stdout.splitlines()]
    assert listed == list(BUNDLED) and "does not load" not in done.stdout


def blocked(module, code):
    """Runs `code` in a fresh interpreter where `module` cannot be imported, as where its extra is not installed."""
    script = f"import sys\nsys.modules[{module!r}] = None\n{code}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize(
    "module, command, message",
    [
        (
            "keras_tuner",
            ["tune"],
            "nsladv: error: `nsladv tune` (nsladv.tuning) needs keras-tuner and tensorboard, which are not installed: "
            "pip install 'nsladv[tune]'",
        ),
        (
            "prometheus_client",
            ["serve"],
            "nsladv: error: `nsladv serve` (nsladv.serving) needs prometheus-client, which is not installed: "
            "pip install 'nsladv[serve]'",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_install(module, command, message):
    done = blocked(module, f"from nsladv.jobs.cli import main\nraise SystemExit(main({command!r}))")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [message + f". Received: ModuleNotFoundError for {module!r}"]


def test_without_matplotlib_the_run_files_are_written_and_the_plot_is_named_as_skipped(tmp_path):
    code = (
        "from nsladv.jobs.model_card import write_run_files\n"
        "result = {'epsilons': [0.1], 'clean_accuracy': 1.0, 'examples': 1, 'attacks': {'fgsm': {}},\n"
        "          'after_each_attack': {'0.1': {'fgsm': 1.0}}, 'worst_case': {'0.1': 1.0},\n"
        "          'confidence_95': {'0.1': [0.2, 1.0]}, 'sanity': {}}\n"
        f"write_run_files({str(tmp_path)!r}, {{'versions': {{}}}}, {{'model': result}}, title='t', plot_title='t',\n"
        "                model={}, dataset={})\n"
    )
    done = blocked("matplotlib", code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plot:   not drawn: matplotlib is not installed (pip install 'nsladv[plot]')" in done.stdout
    assert (tmp_path / "report.json").is_file() and (tmp_path / "model_card.md").is_file()
    assert not (tmp_path / "robustness.png").exists()
