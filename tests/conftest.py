"""Test setup: Triton kernels under the interpreter when there is no GPU; one CPU thread.

The test models are tiny: on a small CPU one intra-op thread is faster than
several, and the interpreter's tile matmuls only thrash with threaded BLAS.
"""

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is first imported

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Must be set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)


@pytest.fixture
def plugin_package(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Make a plugin package visible to this interpreter and its subprocesses, uninstalled.

    ``plugin_package(package, modules, entry_points)`` writes ``package/<module>.py`` for
    each ``modules`` item (module name -> source) and a ``.dist-info`` folder whose
    ``entry_points.txt`` lists ``entry_points`` (entry-point name -> module) in the
    ``vitssl`` group, which ``importlib.metadata`` finds once the folder is on
    ``sys.path`` (and ``PYTHONPATH``, for subprocesses). Returns the distribution name.
    Afterwards the folder, the package's modules and the cached registry are dropped.
    """
    from vitssl.plugins import GROUP, get_registry

    packages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        def make(package: str, modules: dict[str, str], entry_points: dict[str, str]) -> str:
            root = tmp_path / f"site-{package}"
            (root / package).mkdir(parents=True)
            (root / package / "__init__.py").write_text("")
            for module, source in modules.items():
                (root / package / f"{module}.py").write_text(source)
            dist = package.replace("_", "-")
            info = root / f"{package}-0.0.1.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\n"
                                           "Version: 0.0.1\n")
            (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(
                f"{name} = {package}.{module}\n" for name, module in entry_points.items()))
            mp.syspath_prepend(str(root))
            mp.setenv("PYTHONPATH", os.pathsep.join(
                p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p))
            packages.append(package)
            return dist

        yield make
    for package in packages:
        for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[module]
    get_registry(refresh=True)
