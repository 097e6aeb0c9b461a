"""Self-supervised methods, each a small composition of backbone, heads and loss.

Importing this package registers every method in :data:`METHODS`; the trainer builds them by name.
"""

from siamssl.methods import cmc as _cmc  # noqa: F401  (registers "cmc")
from siamssl.methods import instdisc as _instdisc  # noqa: F401  (registers "instdisc")
from siamssl.methods import simsiam as _simsiam  # noqa: F401  (registers "simsiam")
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress
from siamssl.methods.cmc import CMC
from siamssl.methods.instdisc import InstDisc
from siamssl.methods.registry import METHODS, build_method, register_method
from siamssl.methods.simsiam import SimSiam

__all__ = [
    "CMC",
    "InstDisc",
    "METHODS",
    "Batch",
    "MethodContext",
    "ParamGroup",
    "SSLMethod",
    "SimSiam",
    "TrainingProgress",
    "build_method",
    "register_method",
]
