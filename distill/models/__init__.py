"""Student models: DearKD vision transformers (registered with timm on import), Aligner, attention
distance."""

from distill.models.aligner import Aligner
from distill.models.attention_distance import (
    attention_distance,
    average_attention_distance,
    patch_distance_matrix,
)
from distill.models.dearkd import (
    Block,
    DearKD,
    dearkd_base_patch16_224,
    dearkd_micro_patch4_32,
    dearkd_small_patch16_224,
    dearkd_tiny_patch16_224,
    deit_micro_patch4_32,
)
from distill.models.mhca import MHCA, MHSA, local_offsets, relative_position_features

__all__ = [
    "MHCA",
    "MHSA",
    "Aligner",
    "Block",
    "DearKD",
    "attention_distance",
    "average_attention_distance",
    "dearkd_base_patch16_224",
    "dearkd_micro_patch4_32",
    "dearkd_small_patch16_224",
    "dearkd_tiny_patch16_224",
    "deit_micro_patch4_32",
    "local_offsets",
    "patch_distance_matrix",
    "relative_position_features",
]
