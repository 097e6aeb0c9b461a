"""siamssl: Siamese self-supervised learning in plain PyTorch.

Subpackages: ``backbones``, ``heads``, ``losses`` (importable on their own), ``methods``, ``data``,
``eval`` and ``train``. Nothing is imported eagerly here, so ``from siamssl.losses import
NTXentLoss`` loads only the losses.
"""

__version__ = "0.1.0"
