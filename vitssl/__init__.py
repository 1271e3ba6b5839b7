"""vitssl: pretrain Vision Transformers and measure what they learned."""

from vitssl.errors import VitsslError
from vitssl.hookspecs import hookimpl
from vitssl.objective import DataInfo, Objective

__version__ = "0.1.0"
__all__ = ["DataInfo", "Objective", "VitsslError", "hookimpl", "__version__"]
