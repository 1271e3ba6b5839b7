"""The ViT encoder, its layers, the variants table and position-embedding resampling."""

from vitssl.models.build import build_encoder
from vitssl.models.variants import VARIANTS, Variant, parse_model_name
from vitssl.models.vit import VisionTransformer

__all__ = ["VARIANTS", "Variant", "VisionTransformer", "build_encoder", "parse_model_name"]
