"""models: encoders (ViT, Swin, nnFormer), the masked-pretraining adapters, decoder, projection
heads, predictor, prototypes, CASA.

Imports are lazy: `alice.models.configs` (encoder fields, strides, crop checks; no torch) is read
by the DAG and `alice.config`.
"""

import importlib

_EXPORTS = {
    "CASA": "alice.models.casa",
    "MaskedDecoder": "alice.models.decoder",
    "Predictor": "alice.models.heads",
    "ProjectionHead": "alice.models.heads",
    "Prototypes": "alice.models.heads",
    "ViTEncoder": "alice.models.vit",
    "random_masking": "alice.models.vit",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alice.models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
