"""Loss functions of Siamese self-supervised learning.

Each family lives in its own small file with a pure function and a thin ``nn.Module``. Losses hold
no training state (queues, centres and EMA targets belong to the methods), take (N, D) tensors and
return a scalar computed in float32. Losses that need the global batch gather over ranks whenever
torch.distributed is initialized (see :mod:`siamssl.distributed`).
"""

from siamssl.losses.barlow_twins import BarlowTwinsLoss, barlow_twins_loss
from siamssl.losses.cpc import CPCLoss, cpc_loss
from siamssl.losses.cosine import NegativeCosineLoss, NormalizedMSELoss, negative_cosine_similarity, normalized_mse
from siamssl.losses.dino import DINOLoss, dino_loss
from siamssl.losses.infonce import InfoNCELoss, info_nce
from siamssl.losses.invaspread import InvariantSpreadingLoss, invariant_spreading_loss
from siamssl.losses.nce import (
    NCELoss,
    NonParametricSoftmaxLoss,
    full_softmax_loss,
    nce_loss,
    nce_normalizer,
    proximal_penalty,
    sampled_softmax_loss,
)
from siamssl.losses.ntxent import NTXentLoss, nt_xent
from siamssl.losses.swav import SwAVLoss, sinkhorn_knopp, swav_loss
from siamssl.losses.unigrad import UniGradLoss, unigrad_correlation, unigrad_loss
from siamssl.losses.vicreg import VICRegLoss, vicreg_loss

__all__ = [
    "BarlowTwinsLoss",
    "CPCLoss",
    "DINOLoss",
    "InfoNCELoss",
    "InvariantSpreadingLoss",
    "NCELoss",
    "NTXentLoss",
    "NonParametricSoftmaxLoss",
    "NegativeCosineLoss",
    "NormalizedMSELoss",
    "SwAVLoss",
    "UniGradLoss",
    "VICRegLoss",
    "barlow_twins_loss",
    "cpc_loss",
    "dino_loss",
    "full_softmax_loss",
    "info_nce",
    "invariant_spreading_loss",
    "nce_loss",
    "nce_normalizer",
    "negative_cosine_similarity",
    "normalized_mse",
    "nt_xent",
    "proximal_penalty",
    "sampled_softmax_loss",
    "sinkhorn_knopp",
    "swav_loss",
    "unigrad_correlation",
    "unigrad_loss",
    "vicreg_loss",
]
