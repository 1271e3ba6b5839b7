"""Embedded datasets that need no download (``builtin:NAME``)."""

import vitssl
from vitssl.data.digits import Digits


@vitssl.hookimpl
def register_datasets(register):
    register("digits", Digits)
