"""Optional packages, imported only when a format asks for them."""

from __future__ import annotations

import importlib
from types import ModuleType

from vitssl.errors import VitsslError

EXTRA = "export"  # pip install 'vitssl[export]': transformers, onnx, onnxruntime


def require(name: str, purpose: str) -> ModuleType:
    """Import ``name``, or say in one line how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise VitsslError(f"{purpose} needs the '{name}' package, which is not installed; "
                          f"pip install 'vitssl[{EXTRA}]'") from None


def available(name: str) -> bool:
    """Whether ``name`` imports (without saying why not)."""
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False
