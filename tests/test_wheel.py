"""The wheel carries what a checkout has: every module, every built-in plugin, every recipe."""

import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist",
                                    "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree, as ``pip wheel --no-deps .`` does."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)  # the build writes build/ in its tree
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(source), "-w", str(tmp / "dist")], check=True, cwd=tmp)
    (built,) = (tmp / "dist").glob("vitssl-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_every_recipe_is_in_the_wheel(wheel_files):
    recipes = sorted(p.name for p in (ROOT / "configs").iterdir() if p.is_file())
    assert recipes, "no recipes under configs/"
    missing = [name for name in recipes if f"vitssl/configs/{name}" not in wheel_files]
    assert not missing, f"recipes left out of the wheel: {missing}"


def test_every_module_and_builtin_plugin_is_in_the_wheel(wheel_files):
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "vitssl").rglob("*.py")]
    plugins = [f"vitssl_plugins/{p.name}" for p in (ROOT / "plugins").glob("*.py")]
    assert len(modules) > 20 and len(plugins) > 5
    missing = sorted(set(modules + plugins) - wheel_files)
    assert not missing, f"modules left out of the wheel (pyproject's packages list): {missing}"


def test_the_wheel_registers_the_console_script_and_its_plugins(wheel, wheel_files):
    (name,) = [n for n in wheel_files if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    with zipfile.ZipFile(wheel) as archive:
        parser.read_string(archive.read(name).decode())
    assert parser["console_scripts"]["vitssl"] == "vitssl.cli:main"
    modules = dict(parser["vitssl"]).values()
    assert "vitssl_plugins.patch_stem" in modules
    for module in modules:
        assert f"{module.replace('.', '/')}.py" in wheel_files, module


IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL", "scikit-learn": "sklearn",
                "scikit-image": "skimage"}


def test_every_declared_dependency_is_imported():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in project["dependencies"]]
    source = "\n".join(p.read_text() for folder in ("vitssl", "plugins")
                       for p in (ROOT / folder).rglob("*.py"))
    unused = [name for name in names
              if not re.search(rf"^\s*(import|from) {IMPORT_NAMES.get(name, name)}\b", source,
                               re.MULTILINE)]
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
