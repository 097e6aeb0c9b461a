"""Backbones from other libraries by name: ``backbone.name: timm`` (any ``timm`` model, optional
extra ``pip install 'siamssl[timm]'``) and ``backbone.name: torchvision`` (any torchvision ResNet,
ResNeXt, Wide ResNet, ViT or ConvNeXt), always randomly initialized: nothing is downloaded.

Both return the model with its classifier removed, so its ``state_dict`` keeps the library's own
parameter names (``siamssl.export`` writes them so that ``timm.create_model(name)`` or
``torchvision.models.<name>()`` loads them; only the classifier is missing).

* timm: built with ``num_classes=0`` (timm's feature mode: pooled features, no classifier); the
  feature size is the model's ``head_hidden_size`` (the width its ``num_classes=0`` forward returns;
  it differs from ``num_features`` for models with a pre-logits layer, e.g. MobileNetV3) or else
  ``num_features``. ``backbone.kwargs`` go to ``timm.create_model`` (``drop_path_rate``, ``img_size``,
  ``patch_size``, ``dynamic_img_size`` ...) and are checked against the model class's constructor
  when the config is loaded, so a misspelt one fails with the closest valid name.
* torchvision: ``torchvision.models.<model>(weights=None, **kwargs)``; ResNets lose ``fc``, ViTs
  ``heads`` (and accept any input size divisible by the patch, like siamssl's own ViTs), ConvNeXts the
  last ``Linear`` of ``classifier`` (its LayerNorm stays).
* ``cifar_stem``: the ResNet CIFAR stem (3×3 stride-1 ``conv1``, no max-pool) for torchvision's
  ResNet family and timm's ResNets with a single-convolution stem (``resnet18/26/34/50/101/152``,
  ``resnext*``, ``wide_resnet*``, ``seresnet*``...; not the deep-stem ``*d``/``*t`` variants). Other
  architectures refuse it: a ViT takes ``img_size``/``patch_size`` instead.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from siamssl.backbones.registry import BACKBONES
from siamssl.backbones.resnet import ResNetConfig, _adapt_stem
from siamssl.backbones.vit import AnySizeVisionTransformer
from siamssl.errors import ConfigError
from siamssl.registry import closest_match, unknown_name_message
from siamssl.schema import unknown_key_error

TIMM_MISSING = "backbone.name=timm needs the timm package: pip install 'siamssl[timm]' (or pip install timm)"
NO_DOWNLOAD = "siamssl builds backbones without pretrained weights (SSL pretraining starts from a random initialization)"
HEADLESS = "the backbone returns features; the method adds its own heads"


def _kwargs_error(key: str, reason: str) -> ConfigError:
    return ConfigError(f"config key 'backbone.kwargs.{key}' is not allowed: {reason}")


def _constructor_parameters(cls: type) -> Optional[list[str]]:
    """The keyword parameters of ``cls.__init__``, or None when it takes ``**kwargs`` (anything goes)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [name for name, p in parameters.items() if name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _check_kwargs(kwargs: dict[str, Any], valid: Optional[list[str]]) -> None:
    if valid is None:
        return
    for key in kwargs:
        if key not in valid:
            raise unknown_key_error(f"backbone.kwargs.{key}", [f"backbone.kwargs.{k}" for k in valid])


def _cifar_stem_error(library: str, model: str, cls_name: str) -> ConfigError:
    if cls_name == "ResNet":
        cls_name = "ResNet with a deep (multi-convolution) stem"
    return ConfigError(
        f"backbone.cifar_stem=true needs a ResNet with a single-convolution stem (torchvision: resnet*, resnext*, "
        f"wide_resnet*; timm: resnet18/26/34/50/101/152, resnext*, wide_resnet*, seresnet*...), but {library} model "
        f"'{model}' is a {cls_name}: set backbone.cifar_stem=false (a ViT takes small images through "
        "backbone.kwargs.img_size/patch_size in timm, image_size in torchvision)"
    )


# ------------------------------------------------------------------------------------------ timm


def import_timm() -> Any:
    """The ``timm`` module, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(TIMM_MISSING) from None
    return timm


def timm_reference(model: str, kwargs: dict[str, Any], num_classes: Optional[int] = None) -> nn.Module:
    """``timm.create_model(model, **kwargs)`` on the meta device: its class and parameter names and
    shapes without allocating or initializing weights."""
    timm = import_timm()
    extra = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        return timm.create_model(model, pretrained=False, **kwargs, **extra)


def timm_classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The classifier modules of a timm model (its ``pretrained_cfg['classifier']``: ``fc``, ``head``,
    ``head.fc``...), whose parameters a feature backbone does not have."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _is_timm_single_conv_resnet(model: nn.Module) -> bool:
    from timm.models.resnet import ResNet

    return isinstance(model, ResNet) and isinstance(model.conv1, nn.Conv2d)


@dataclass
class TimmConfig:
    """``model``: a timm model name (``timm.list_models()``), e.g. ``resnet50``, ``vit_small_patch16_224``,
    ``convnext_tiny``. ``kwargs``: keyword arguments of ``timm.create_model`` (the model class's
    constructor), e.g. ``{drop_path_rate: 0.1}`` or ``{img_size: 32, patch_size: 4}``.
    ``cifar_stem``: 3×3 stride-1 ``conv1`` and no max-pool (timm ResNets with a single-conv stem)."""

    model: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False

    def __post_init__(self) -> None:
        timm = import_timm()
        if not self.model:
            raise ConfigError("backbone.name=timm needs backbone.model: a timm model name such as resnet50 or vit_small_patch16_224")
        if self.model.startswith(("hf-hub:", "hf_hub:")):
            raise ConfigError(f"backbone.model='{self.model}' would download from the Hugging Face Hub; {NO_DOWNLOAD}")
        if not timm.is_model(self.model):
            hint = closest_match(self.model.split(".", 1)[0], timm.list_models())
            did_you_mean = f" (did you mean '{hint}'?)" if hint else ""
            raise ConfigError(f"unknown timm model '{self.model}'{did_you_mean}; see timm.list_models()")
        for key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
            if key in self.kwargs:
                raise _kwargs_error(key, NO_DOWNLOAD)
        for key in ("num_classes", "features_only"):
            if key in self.kwargs:
                raise _kwargs_error(key, HEADLESS)
        try:
            reference = timm_reference(self.model, {}, num_classes=0)
        except Exception:  # noqa: BLE001 — a model that cannot be traced on meta: its kwargs are checked when built
            return
        valid = _constructor_parameters(type(reference))
        _check_kwargs(self.kwargs, None if valid is None else valid + ["scriptable", "exportable", "no_jit"])
        if self.cifar_stem and not _is_timm_single_conv_resnet(reference):
            raise _cifar_stem_error("timm", self.model, type(reference).__name__)


@BACKBONES.register("timm", config=TimmConfig)
def timm_backbone(cfg: TimmConfig) -> tuple[nn.Module, int]:
    """Any timm model without its classifier (``num_classes=0``); features of ``head_hidden_size``
    (else ``num_features``) channels."""
    timm = import_timm()
    try:
        model = timm.create_model(cfg.model, pretrained=False, num_classes=0, **cfg.kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"timm model '{cfg.model}' rejects backbone.kwargs {cfg.kwargs}: {exc}") from None
    if cfg.cifar_stem:
        if not _is_timm_single_conv_resnet(model):
            raise _cifar_stem_error("timm", cfg.model, type(model).__name__)
        conv = model.conv1
        model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
        model.maxpool = nn.Identity()
    feature_dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(feature_dim)


# ----------------------------------------------------------------------------------- torchvision

#: torchvision families the ``torchvision`` backbone knows how to strip: name prefixes → (class name,
#: the classifier module removed, the constructor arguments the builders fix).
TORCHVISION_FAMILIES: dict[tuple[str, ...], tuple[str, str, tuple[str, ...]]] = {
    ("resnet", "resnext", "wide_resnet"): ("ResNet", "fc", ("block", "layers")),
    ("vit_",): ("VisionTransformer", "heads", ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")),
    ("convnext_",): ("ConvNeXt", "classifier.2", ("block_setting",)),
}


def torchvision_family(model: str) -> tuple[str, str, tuple[str, ...]]:
    """(class name, classifier module, builder-fixed arguments) of a supported torchvision model name,
    or a one-line error naming the closest supported one."""
    import torchvision.models as models

    for prefixes, family in TORCHVISION_FAMILIES.items():
        if model.startswith(prefixes) and model in models.list_models(module=models):
            return family
    names = models.list_models(module=models)
    if model in names:
        raise ConfigError(
            f"torchvision model '{model}' is not one the torchvision backbone supports (ResNet, ResNeXt, Wide ResNet, "
            f"ViT, ConvNeXt); timm has most other architectures: backbone.name=timm backbone.model=<timm name>"
        )
    supported = [n for n in names if n.startswith(sum(TORCHVISION_FAMILIES, ()))]
    raise ConfigError(unknown_name_message("torchvision backbone model", model, supported)
                      + " (the torchvision backbone supports its ResNet, ResNeXt, Wide ResNet, ViT and ConvNeXt models)")


def torchvision_head(model: str) -> str:
    """The classifier module of torchvision model ``model``: ``fc``, ``heads.head`` or ``classifier.2``."""
    head = torchvision_family(model)[1]
    return "heads.head" if head == "heads" else head


@dataclass
class TorchvisionConfig:
    """``model``: a torchvision ResNet/ResNeXt/Wide ResNet (``resnet50``, ``resnext50_32x4d``), ViT
    (``vit_b_16``) or ConvNeXt (``convnext_tiny``) name. ``kwargs``: its builder's keyword arguments
    (``zero_init_residual: true``, ViT ``image_size: 32``, ConvNeXt ``stochastic_depth_prob``...); never
    ``weights``. ``cifar_stem``: 3×3 stride-1 ``conv1`` and no max-pool (ResNet family only)."""

    model: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False

    def __post_init__(self) -> None:
        import torchvision.models as models

        if not self.model:
            raise ConfigError("backbone.name=torchvision needs backbone.model, e.g. resnet50, vit_b_16 or convnext_tiny")
        class_name, _, fixed = torchvision_family(self.model)
        if "weights" in self.kwargs:
            raise _kwargs_error("weights", NO_DOWNLOAD)
        if "num_classes" in self.kwargs:
            raise _kwargs_error("num_classes", HEADLESS)
        for key in self.kwargs:
            if key in fixed:
                raise _kwargs_error(key, f"torchvision's {self.model} sets it; choose the model name with the size you want")
        parameters = _constructor_parameters(getattr(models, class_name)) or []
        _check_kwargs(self.kwargs, [p for p in parameters if p not in fixed and p != "num_classes"] + ["progress"])
        if self.cifar_stem and class_name != "ResNet":
            raise _cifar_stem_error("torchvision", self.model, class_name)


@BACKBONES.register("torchvision", config=TorchvisionConfig)
def torchvision_backbone(cfg: TorchvisionConfig) -> tuple[nn.Module, int]:
    """A torchvision ResNet, ViT or ConvNeXt without its classifier, randomly initialized."""
    import torchvision.models as models

    class_name, _, _ = torchvision_family(cfg.model)
    try:
        model = models.get_model(cfg.model, weights=None, **cfg.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchvision model '{cfg.model}' rejects backbone.kwargs {cfg.kwargs}: {exc}") from None
    if class_name == "ResNet":
        feature_dim = model.fc.in_features
        model.fc = nn.Identity()
        if cfg.cifar_stem:
            _adapt_stem(model, ResNetConfig(cifar_stem=True))
    elif class_name == "VisionTransformer":
        feature_dim = model.hidden_dim
        model.heads = nn.Identity()
        model.__class__ = AnySizeVisionTransformer  # same modules and state; any input size divisible by the patch
    else:
        feature_dim = model.classifier[-1].in_features
        model.classifier[-1] = nn.Identity()
    return model, int(feature_dim)
