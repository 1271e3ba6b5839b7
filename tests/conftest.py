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


@pytest.fixture(scope="session")
def six_bands(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiff/`` and ``npy/``: the same 2 x 12 labelled 6-band 16-bit images (16 x 16) whose
    class lives only in band 5 (bands 0-4 are noise of one distribution)."""
    import numpy as np

    tifffile = pytest.importorskip("tifffile")
    root = tmp_path_factory.mktemp("six-bands")
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / "tiff" / f"c{label}").mkdir(parents=True)
        (root / "npy" / f"c{label}").mkdir(parents=True)
        for i in range(12):
            bands = rng.integers(0, 65536, (6, 16, 16), dtype=np.uint16)
            bands[5] = rng.integers(0, 24000, (16, 16)) + 40000 * label
            tifffile.imwrite(root / "tiff" / f"c{label}" / f"{i}.tif", bands.transpose(1, 2, 0),
                             photometric="minisblack", planarconfig="contig")
            np.save(root / "npy" / f"c{label}" / f"{i}.npy", bands)
    return root
