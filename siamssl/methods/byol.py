"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020), as in deepmind-research/byol.

An online network (backbone, projector, predictor) regresses the projection of the other view made
by a target network (backbone + projector), an exponential moving average of the online one:

    L = mean_i [ ℓ(q_θ(z_θ(v_i)), sg z_ξ(v'_i)) + ℓ(q_θ(z_θ(v'_i)), sg z_ξ(v_i)) ],   ℓ = 2 − 2 cos

(both directions summed, ``byol_experiment.py``), then, **after** the optimizer step k,
ξ ← τ_k ξ + (1 − τ_k) θ with τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 (``_update_fn`` uses the step
being taken). Only parameters are averaged: the target's BatchNorm statistics come from its own
forward passes in training mode. The two views go through each network separately, so BatchNorm
statistics are per view (``apply_once_fn`` per view; concatenating them changes results, mmselfsup
issue #65). The asymmetric augmentations (blur 1.0/0.1, solarize 0/0.2) live in the data config.

``predictor: directpred`` replaces the learned predictor by DirectPred's linear one, set from the
correlation of the online projections (Tian et al., ICML 2021, whose official code is BYOL-based;
:mod:`siamssl.heads.directpred`).

The official target is initialized from a different random seed ("we did not notice a significant
difference with using the same rng"); here it starts as a copy, like every other momentum method.

``target`` switches the target network (the research questions of docs/research_questions.md):

* ``ema`` (default): the momentum copy above.
* ``fixed_random``: a second backbone and projector initialized independently of the online network
  (fresh draws, not a copy) and never updated: BYOL's Sec. 3.1 experiment, where predicting a fixed
  random target's projection already gives 18.8% linear top-1 on ImageNet against 1.4% for the
  random encoder itself. BatchNorm in the target still normalizes with batch statistics.
* ``shallow``: the target is the first ``shallow_stages`` stages of an EMA copy of the online
  backbone (default: the first half, e.g. ``layer1``-``layer2`` of a ResNet), global-average-pooled,
  followed by its own projector MLP (same shape as the online one, input width of that stage) that is
  fixed at its random initialization: it has no online counterpart to average, and a target receives
  no gradient. The stages follow the online network by EMA as in BYOL, because the question is
  whether the middle of the *trained* network is already a good enough target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from siamssl.backbones import TruncatedBackbone, stage_names
from siamssl.errors import ConfigError
from siamssl.heads import DirectPredictor, DirectPredOptions, byol_mlp
from siamssl.losses import normalized_mse
from siamssl.methods.base import Batch, MethodContext, SSLMethod, TrainingProgress
from siamssl.methods.momentum import cosine_momentum, ema_update_, make_target
from siamssl.methods.registry import register_method


@register_method("byol")
class BYOL(SSLMethod):
    @dataclass
    class Config:
        """BYOL options; defaults are the paper's ImageNet values.

        proj_hidden_dim / proj_dim: projector Linear(bias)+BN+ReLU → Linear(no bias): 4096 → 256.
        pred_hidden_dim: the predictor's hidden width (4096; same MLP shape, 256 → 256).
        momentum: τ_base, the target's EMA rate at step 0 (0.996; the code's presets use 0.99 for
            300 epochs, 0.97 for 40).
        momentum_schedule: ``cosine`` raises τ to 1 over training (the paper); ``constant`` keeps τ_base
            (lucidrains/byol-pytorch).
        predictor: ``learned`` (the MLP above) or ``directpred`` (linear, set from the projections'
            correlation after every ``directpred.freq`` optimizer steps, never trained).
        directpred: ρ, ε and update frequency of the DirectPred predictor.
        target: ``ema`` (BYOL), ``fixed_random`` (an independent random target, never updated) or
            ``shallow`` (EMA of the first ``shallow_stages`` backbone stages + a fixed random MLP).
        shallow_stages: stages in the shallow target; 0 means half of the backbone's (rounded down).
        """

        proj_hidden_dim: int = 4096
        proj_dim: int = 256
        pred_hidden_dim: int = 4096
        momentum: float = 0.996
        momentum_schedule: Literal["cosine", "constant"] = "cosine"
        predictor: Literal["learned", "directpred"] = "learned"
        directpred: DirectPredOptions = field(default_factory=DirectPredOptions)
        target: Literal["ema", "fixed_random", "shallow"] = "ema"
        shallow_stages: int = 0

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: "BYOL.Config",
                 target_backbone: "tuple[nn.Module, int] | None" = None) -> None:
        """``target_backbone``: (module, feature_dim) of an independently initialized backbone, needed
        by ``target=fixed_random``."""
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = byol_mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor: nn.Module = (
            DirectPredictor(cfg.proj_dim, cfg.directpred)
            if cfg.predictor == "directpred"
            else byol_mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        )
        self.target_backbone: nn.Module
        self.target_projector: nn.Module
        if cfg.target == "ema":
            self.target_backbone = make_target(backbone)
            self.target_projector = make_target(self.projector)
        elif cfg.target == "fixed_random":
            if target_backbone is None:
                raise ConfigError("method.target=fixed_random needs an independently initialized target backbone")
            module, target_dim = target_backbone
            self.target_backbone = make_target(module)
            self.target_projector = make_target(byol_mlp(target_dim, cfg.proj_hidden_dim, cfg.proj_dim))
        else:
            stages = cfg.shallow_stages or len(stage_names(backbone)) // 2
            if not 1 <= stages <= len(stage_names(backbone)):
                raise ConfigError(f"method.shallow_stages={cfg.shallow_stages} is outside 1..{len(stage_names(backbone))}")
            shallow = TruncatedBackbone(make_target(backbone), stages)
            self.target_backbone = shallow
            self.target_projector = make_target(byol_mlp(shallow.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim))

    @classmethod
    def from_config(cls, cfg: "BYOL.Config", backbone: nn.Module, feature_dim: int, context: MethodContext) -> "BYOL":
        if cfg.target == "fixed_random":
            if context.make_backbone is None:
                raise ConfigError("method.target=fixed_random needs the run's backbone builder (MethodContext.make_backbone)")
            return cls(backbone, feature_dim, cfg, target_backbone=context.make_backbone())
        return cls(backbone, feature_dim, cfg)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """τ used for the EMA update after optimizer step ``step``."""
        if self.cfg.momentum_schedule == "constant":
            return self.cfg.momentum
        return cosine_momentum(self.cfg.momentum, step, total_steps)

    def forward(self, batch: Batch, progress: TrainingProgress) -> dict[str, Tensor]:
        x1, x2 = batch.views[0], batch.views[1]
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        if isinstance(self.predictor, DirectPredictor) and self.training:
            self.predictor.observe(z1, z2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return {"loss": loss, "features": f1.detach(), "embedding": z1.detach()}

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        tau = self.momentum_at(progress.step, progress.total_steps)
        if self.cfg.target == "ema":
            ema_update_(self.target_backbone, self.backbone, tau)
            ema_update_(self.target_projector, self.projector, tau)
        elif self.cfg.target == "shallow":  # the stages follow by EMA; the target MLP stays fixed
            ema_update_(self.target_backbone.backbone, self.backbone, tau)
        if isinstance(self.predictor, DirectPredictor):
            self.predictor.update()
