"""Shared evaluation helpers: feature extraction and caching, ridge regression, metrics."""
