"""Embedded or installed datasets that need no download (``builtin:NAME``)."""

import vitssl
from vitssl.data.digits import Digits
from vitssl.data.dsprites import DSpritesLoc, DSpritesOri
from vitssl.data.idx import MNIST, FashionMNIST
from vitssl.data.photos import Photos


@vitssl.hookimpl
def register_datasets(register):
    register("digits", Digits)
    register("dsprites-loc", DSpritesLoc)
    register("dsprites-ori", DSpritesOri)
    register("fashion-mnist", FashionMNIST)
    register("mnist", MNIST)
    register("photos", Photos)
