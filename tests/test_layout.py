"""The package's shape: the library never imports the jobs, and a wheel ships no top-level `pipelines`."""

import ast
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nsladv"


def _imports(path):
    """Every module name a file imports (`from a import b` gives a and a.b)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _library_modules():
    return [p for p in PACKAGE.rglob("*.py") if "jobs" not in p.relative_to(PACKAGE).parts]


def test_the_library_never_imports_the_jobs():
    """Jobs may import anything; no library module imports nsladv.jobs (nsladv/__init__ only names it lazily)."""
    offenders = {
        str(path.relative_to(ROOT)): name
        for path in _library_modules()
        for name in _imports(path)
        if name == "nsladv.jobs" or name.startswith("nsladv.jobs.")
    }
    assert len(_library_modules()) > 20 and offenders == {}


def test_the_import_rule_test_sees_an_offender(tmp_path):
    offender = tmp_path / "offender.py"
    offender.write_text("from nsladv.jobs import harden\nimport nsladv.jobs.cli as cli\n")
    assert {"nsladv.jobs", "nsladv.jobs.harden", "nsladv.jobs.cli"} <= set(_imports(offender))


@pytest.mark.slow
def test_a_wheel_ships_pipelines_inside_nsladv_only(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("nsladv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"nsladv"}
    assert {"nsladv/pipelines/__init__.py", "nsladv/pipelines/mnist.py", "nsladv/jobs/cli.py"} <= set(names)


def test_docker_commands_pin_the_serving_image_to_the_exporting_tensorflow():
    """An untagged tensorflow/serving image can be older or newer than the TensorFlow that wrote the SavedModel
    and fail with "Op type not registered": every docker command names the TensorFlow that CI tests
    (constraints.txt)."""
    pinned = re.search(r"^tensorflow==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    for doc in ("README.md", "saved_models/README.md"):
        images = re.findall(r"tensorflow/serving(\S*)", (ROOT / doc).read_text())
        assert images and all(image == f":{pinned}" for image in images), (doc, images, pinned)
