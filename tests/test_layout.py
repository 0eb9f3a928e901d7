"""The package's shape: the library never imports the jobs, and a wheel ships no top-level `pipelines`."""

import ast
import pathlib
import re

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


def test_the_only_job_names_the_package_exports_by_string_are_the_declared_ones():
    """`nsladv/__init__.py` names modules in strings, which the import test cannot see: its entries into the jobs
    are these four entry points of the Python API, and no library name resolves into nsladv.jobs."""
    import nsladv

    into_jobs = {name for name, module in {**nsladv._EXPORTS, **nsladv._SUBMODULES}.items() if ".jobs" in module}
    assert into_jobs == {"Pipeline", "GraphSetup", "load_pipeline", "harden"}


def test_the_import_rule_test_sees_an_offender(tmp_path):
    offender = tmp_path / "offender.py"
    offender.write_text("from nsladv.jobs import harden\nimport nsladv.jobs.cli as cli\n")
    assert {"nsladv.jobs", "nsladv.jobs.harden", "nsladv.jobs.cli"} <= set(_imports(offender))


def test_docker_commands_pin_the_serving_image_to_the_exporting_tensorflow():
    """An untagged tensorflow/serving image can be older or newer than the TensorFlow that wrote the SavedModel
    and fail with "Op type not registered": every docker command names the TensorFlow that CI tests
    (constraints.txt)."""
    pinned = re.search(r"^tensorflow==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    for doc in ("README.md", "saved_models/README.md"):
        images = re.findall(r"tensorflow/serving(\S*)", (ROOT / doc).read_text())
        assert images and all(image == f":{pinned}" for image in images), (doc, images, pinned)
