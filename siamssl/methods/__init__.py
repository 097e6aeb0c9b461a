"""Self-supervised methods, each a small composition of backbone, heads and loss.

Importing this package registers every method in :data:`METHODS`; the trainer builds them by name.
"""

from siamssl.methods import simsiam as _simsiam  # noqa: F401  (registers "simsiam")
from siamssl.methods import unigrad as _unigrad  # noqa: F401  (registers "unigrad")
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress
from siamssl.methods.registry import METHODS, build_method, register_method
from siamssl.methods.simsiam import SimSiam
from siamssl.methods.unigrad import UniGrad

__all__ = [
    "METHODS",
    "Batch",
    "MethodContext",
    "ParamGroup",
    "SSLMethod",
    "SimSiam",
    "TrainingProgress",
    "UniGrad",
    "build_method",
    "register_method",
]
