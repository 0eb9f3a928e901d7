"""The NSL bridge: nsladv imports on TF 2.21 as is, and only one module touches NSL."""

import pathlib
import subprocess
import sys

import nsladv
from nsladv import _nsl

PACKAGE = pathlib.Path(nsladv.__file__).parent


def test_import_works_in_a_fresh_interpreter_with_nothing_set():
    code = (
        "import sys, nsladv, tensorflow as tf; nsladv.wrap;"
        "stub = sys.modules['neural_structured_learning.estimator'];"
        "print(tf.__version__, nsladv.__version__, 'nsladv' in (stub.__doc__ or ''))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tf_version, _, stubbed = result.stdout.split()
    assert tf_version.startswith("2.21") and stubbed == "True"


def test_import_nsladv_does_not_load_tensorflow():
    code = "import sys, nsladv; print('tensorflow' in sys.modules, nsladv.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[0] == "False"


def test_the_public_api_resolves_to_what_it_declares():
    """Each lazy name is the object of the module it names, and `__all__` lists exactly them."""
    import importlib

    assert nsladv.__all__ == sorted({*nsladv._EXPORTS, *nsladv._SUBMODULES, "__version__"})
    for name, module in nsladv._EXPORTS.items():
        assert getattr(nsladv, name) is getattr(importlib.import_module(module), name), name
    for name, module in nsladv._SUBMODULES.items():
        assert getattr(nsladv, name) is importlib.import_module(module), name


def test_the_functions_are_nsl_own():
    assert _nsl.nsl.__version__ == "1.4.0"
    assert _nsl.nsl.lib.gen_adv_neighbor.__module__ == "neural_structured_learning.lib.adversarial_neighbor"
    assert _nsl.nsl.lib.project_to_ball.__module__ == "neural_structured_learning.lib.utils"


def test_only_the_bridge_imports_nsl():
    offenders = [
        path.name
        for path in PACKAGE.rglob("*.py")
        if path.name != "_nsl.py" and "neural_structured_learning" in path.read_text()
    ]
    assert offenders == []
