"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

Two views share one encoder (backbone + projector); a predictor maps one view's projection onto the
other's, whose gradient is stopped. The paper's ablation switches are all here: ``stop_gradient``,
``symmetric`` and ``predictor`` (learned / none / fixed at random init), and the predictor's learning
rate fixed (the official ``--fix-pred-lr``) or scheduled like the rest. ``predictor: directpred``
replaces the MLP by DirectPred's linear predictor set from the correlation of its inputs (Tian et
al., ICML 2021; :mod:`siamssl.heads.directpred`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from siamssl.heads import DirectPredictor, DirectPredOptions, simsiam_predictor, simsiam_projector
from siamssl.losses import negative_cosine_similarity
from siamssl.methods.base import Batch, MethodContext, ParamGroup, SSLMethod, TrainingProgress, trainable
from siamssl.methods.registry import register_method


@register_method("simsiam")
class SimSiam(SSLMethod):
    @dataclass
    class Config:
        """SimSiam options; defaults are the ImageNet paper values (configs/simsiam.yaml has CIFAR's).

        proj_dim: width of every projector layer (2048). proj_layers: 3 for ImageNet, 2 for CIFAR.
        pred_hidden_dim: the predictor bottleneck (512).
        predictor: "learned", "none" (p = z; collapses), "fixed_random" (frozen at init; does not converge) or
            "directpred" (linear, W set from the input correlation; options under ``directpred``).
        predictor_lr: "fixed" keeps the predictor at the initial learning rate; "scheduled" decays it.
        stop_gradient: stop the gradient through the target branch (False collapses).
        symmetric: average both directions; False uses D(p1, z2) only.
        directpred: ρ, ε and update frequency of the DirectPred predictor (official: 0.3, 0.01, 1).
        """

        proj_dim: int = 2048
        proj_layers: int = 3
        pred_hidden_dim: int = 512
        predictor: Literal["learned", "none", "fixed_random", "directpred"] = "learned"
        predictor_lr: Literal["fixed", "scheduled"] = "fixed"
        stop_gradient: bool = True
        symmetric: bool = True
        directpred: DirectPredOptions = field(default_factory=DirectPredOptions)

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "SimSiam.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = simsiam_projector(feature_dim, cfg.proj_dim, cfg.proj_layers)
        self.predictor = _make_predictor(cfg)

    @classmethod
    def from_config(cls, cfg: "SimSiam.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "SimSiam":
        return cls(backbone, feature_dim, cfg)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        # Views go through the encoder separately, so BatchNorm statistics are per view as in the
        # official code.
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        if isinstance(self.predictor, DirectPredictor) and self.training:
            self.predictor.observe(z1, z2)
        p1 = self.predictor(z1)
        loss = negative_cosine_similarity(p1, z2, self.cfg.stop_gradient)
        if self.cfg.symmetric:
            p2 = self.predictor(z2)
            loss = 0.5 * (loss + negative_cosine_similarity(p2, z1, self.cfg.stop_gradient))
        return {"loss": loss, "features": f1.detach(), "embedding": z1.detach()}

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        if isinstance(self.predictor, DirectPredictor):
            self.predictor.update()

    @torch.no_grad()
    def parameter_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("encoder", trainable(self.backbone) + trainable(self.projector))]
        if self.cfg.predictor == "learned":
            groups.append(ParamGroup("predictor", trainable(self.predictor), fixed_lr=self.cfg.predictor_lr == "fixed"))
        return groups


def _make_predictor(cfg: SimSiam.Config) -> nn.Module:
    if cfg.predictor == "none":
        return nn.Identity()
    if cfg.predictor == "directpred":
        return DirectPredictor(cfg.proj_dim, cfg.directpred)
    predictor = simsiam_predictor(cfg.proj_dim, cfg.pred_hidden_dim)
    if cfg.predictor == "fixed_random":
        predictor.requires_grad_(False)
    return predictor
