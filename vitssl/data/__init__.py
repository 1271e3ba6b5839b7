"""Datasets by spec (``builtin:``, ``folder:``, ``wds:``, ``vtab1k:``), transforms and loaders."""

from vitssl.data.spec import DataSpec, parse_spec

__all__ = ["DataSpec", "parse_spec"]
