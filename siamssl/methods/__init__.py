"""Self-supervised methods, each a small composition of backbone, heads and loss.

Importing this package registers every method in :data:`METHODS`; the trainer builds them by name.
"""

from siamssl.methods import barlow_twins as _barlow_twins  # noqa: F401  (registers "barlow_twins")
from siamssl.methods import byol as _byol  # noqa: F401  (registers "byol")
from siamssl.methods import cmc as _cmc  # noqa: F401  (registers "cmc")
from siamssl.methods import cpc as _cpc  # noqa: F401  (registers "cpc")
from siamssl.methods import dino as _dino  # noqa: F401  (registers "dino")
from siamssl.methods import instdisc as _instdisc  # noqa: F401  (registers "instdisc")
from siamssl.methods import invaspread as _invaspread  # noqa: F401  (registers "invaspread")
from siamssl.methods import moco as _moco  # noqa: F401  (registers "moco")
from siamssl.methods import mocov3 as _mocov3  # noqa: F401  (registers "mocov3")
from siamssl.methods import simclr as _simclr  # noqa: F401  (registers "simclr")
from siamssl.methods import simsiam as _simsiam  # noqa: F401  (registers "simsiam")
from siamssl.methods import swav as _swav  # noqa: F401  (registers "swav")
from siamssl.methods import vicreg as _vicreg  # noqa: F401  (registers "vicreg")
from siamssl.methods import unigrad as _unigrad  # noqa: F401  (registers "unigrad")
from siamssl.methods.barlow_twins import BarlowTwins
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress
from siamssl.methods.byol import BYOL
from siamssl.methods.cmc import CMC
from siamssl.methods.cpc import CPC
from siamssl.methods.dino import DINO
from siamssl.methods.instdisc import InstDisc
from siamssl.methods.invaspread import InvaSpread
from siamssl.methods.moco import MoCo
from siamssl.methods.mocov3 import MoCoV3
from siamssl.methods.registry import METHODS, build_method, register_method
from siamssl.methods.simclr import SimCLR
from siamssl.methods.simsiam import SimSiam
from siamssl.methods.swav import SwAV
from siamssl.methods.unigrad import UniGrad
from siamssl.methods.vicreg import VICReg

__all__ = [
    "BYOL",
    "CMC",
    "CPC",
    "DINO",
    "METHODS",
    "BarlowTwins",
    "Batch",
    "InstDisc",
    "InvaSpread",
    "MethodContext",
    "MoCo",
    "MoCoV3",
    "ParamGroup",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "TrainingProgress",
    "UniGrad",
    "VICReg",
    "build_method",
    "register_method",
]
