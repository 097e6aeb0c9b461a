"""Self-supervised methods, each a small composition of backbone, heads and loss.

Importing this package registers every method in :data:`METHODS`; the trainer builds them by name.
"""

from siamssl.methods import byol as _byol  # noqa: F401  (registers "byol")
from siamssl.methods import moco as _moco  # noqa: F401  (registers "moco")
from siamssl.methods import mocov3 as _mocov3  # noqa: F401  (registers "mocov3")
from siamssl.methods import simclr as _simclr  # noqa: F401  (registers "simclr")
from siamssl.methods import simsiam as _simsiam  # noqa: F401  (registers "simsiam")
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress
from siamssl.methods.byol import BYOL
from siamssl.methods.moco import MoCo
from siamssl.methods.mocov3 import MoCoV3
from siamssl.methods.registry import METHODS, build_method, register_method
from siamssl.methods.simclr import SimCLR
from siamssl.methods.simsiam import SimSiam

__all__ = [
    "BYOL",
    "METHODS",
    "Batch",
    "MethodContext",
    "MoCo",
    "MoCoV3",
    "ParamGroup",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "TrainingProgress",
    "build_method",
    "register_method",
]
