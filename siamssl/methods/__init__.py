"""Self-supervised methods, each a small composition of backbone, heads and loss.

Importing this package registers every method in :data:`METHODS`; the trainer builds them by name.
"""

from siamssl.methods import barlow_twins as _barlow_twins  # noqa: F401  (registers "barlow_twins")
from siamssl.methods import cmc as _cmc  # noqa: F401  (registers "cmc")
from siamssl.methods import dino as _dino  # noqa: F401  (registers "dino")
from siamssl.methods import instdisc as _instdisc  # noqa: F401  (registers "instdisc")
from siamssl.methods import simsiam as _simsiam  # noqa: F401  (registers "simsiam")
from siamssl.methods import swav as _swav  # noqa: F401  (registers "swav")
from siamssl.methods import vicreg as _vicreg  # noqa: F401  (registers "vicreg")
from siamssl.methods.barlow_twins import BarlowTwins
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress
from siamssl.methods.cmc import CMC
from siamssl.methods.dino import DINO
from siamssl.methods.instdisc import InstDisc
from siamssl.methods.registry import METHODS, build_method, register_method
from siamssl.methods.simsiam import SimSiam
from siamssl.methods.swav import SwAV
from siamssl.methods.vicreg import VICReg

__all__ = [
    "CMC",
    "DINO",
    "METHODS",
    "BarlowTwins",
    "Batch",
    "InstDisc",
    "MethodContext",
    "ParamGroup",
    "SSLMethod",
    "SimSiam",
    "SwAV",
    "TrainingProgress",
    "VICReg",
    "build_method",
    "register_method",
]
