"""Datasets by spec (``builtin:``, ``idx:``, ``folder:``, ``wds:``, ``vtab1k:``) and loaders."""

from vitssl.data.source import DataSpec, Source, open_dataset, parse_spec

__all__ = ["DataSpec", "Source", "open_dataset", "parse_spec"]
