"""vitssl: pretrain Vision Transformers and measure what they learned."""

from vitssl.errors import VitsslError
from vitssl.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["VitsslError", "hookimpl", "__version__"]
