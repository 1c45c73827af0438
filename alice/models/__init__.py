"""models: encoders, decoder, projection heads, CASA."""

from alice.models.casa import CASA
from alice.models.decoder import MaskedDecoder
from alice.models.heads import ProjectionHead
from alice.models.vit import ViTEncoder, random_masking

__all__ = ["CASA", "MaskedDecoder", "ProjectionHead", "ViTEncoder", "random_masking"]
