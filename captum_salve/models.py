"""What differs between model families, in one place.

Every other module works from what this one hands it: the classifier head, the
default Grad-FAM layer, and how a token sequence maps onto an image grid. Adding
a family means adding one :class:`ModelFamily` to :data:`FAMILIES`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from captum_salve.checks import check_fraction

__all__ = [
    "DATA_CONFIG_KEYS",
    "FAMILIES",
    "ModelFamily",
    "SavedConfig",
    "TokenLayout",
    "check_data_config",
    "create_model",
    "default_cam_layer",
    "describe_input_config",
    "family_of",
    "feature_layout",
    "find_head",
    "fixed_image_size",
    "get_module",
    "input_config",
    "input_normalization",
    "keep_classes",
    "model_device",
    "model_input",
    "model_label",
    "module_name",
    "saved_config",
    "set_input_config",
    "token_layout",
]

TORCHVISION_PREFIX = "torchvision/"


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer's token sequence maps onto the image.

    Attributes:
        prefix_tokens: Leading tokens that are not image patches (class, register).
        grid: Patch grid as (rows, columns).

    Example:
        >>> token_layout(timm.create_model("vit_tiny_patch16_224"))    # [CLS] + 14 × 14 patches
        TokenLayout(prefix_tokens=1, grid=(14, 14))
    """

    prefix_tokens: int
    grid: tuple[int, int]


@dataclass(frozen=True)
class ModelFamily:
    """The facts about one family of classifiers that the rest of the package needs.

    Attributes:
        name: Short name shown in messages.
        matches: Whether a model belongs to the family.
        head: Dotted path of the final ``nn.Linear`` (or of a 1×1 ``nn.Conv2d`` on pooled
            features, which :func:`find_head` hands out as a linear view).
        cam_layer: The default Grad-FAM layer of a model of the family.
        token_layout: For token models, the layout of the token sequence.
        channels_last: Whether the family's spatial layers (blocks, stages) give
            ``(N, h, w, C)`` rather than ``(N, C, h, w)`` (timm's Swin); see :func:`feature_layout`.

    Example:
        >>> from timm.models.regnet import RegNet
        >>> family = ModelFamily("timm-regnet", lambda m: isinstance(m, RegNet), "head.fc", lambda m: m.s4)
        >>> FAMILIES.append(family)    # or, in this module, one more entry of FAMILIES
        >>> family_of(timm.create_model("regnetx_002")).name
        'timm-regnet'
    """

    name: str
    matches: Callable[[nn.Module], bool]
    head: str
    cam_layer: Callable[[nn.Module], nn.Module]
    token_layout: Callable[[nn.Module], TokenLayout] | None = None
    channels_last: bool = False


def _timm_vit_layout(model: nn.Module) -> TokenLayout:
    return TokenLayout(int(model.num_prefix_tokens), tuple(model.patch_embed.grid_size))


def _torchvision_vit_layout(model: nn.Module) -> TokenLayout:
    side = model.image_size // model.patch_size
    return TokenLayout(1, (side, side))


def _timm_token_family(name: str, module: str, cls: str) -> ModelFamily:
    """A timm ViT relative: prefix tokens then a patch grid, blocks with a first norm, head ``head``."""
    return ModelFamily(
        name, lambda m: _is_instance(m, module, cls), "head", lambda m: m.blocks[-1].norm1, _timm_vit_layout
    )


# The token models' default layers avoid the zero-gradient pitfall: a code read from the
# [CLS] pre-logits has exactly zero gradient on the patch tokens of the last block's
# output, so the norm in front of the last block's attention is used (for models that
# average the patch tokens it is the same layer, so every ViT relative maps alike).
FAMILIES: list[ModelFamily] = [
    ModelFamily(
        "timm-resnet",
        lambda m: _is_instance(m, "timm.models.resnet", "ResNet"),
        "fc",
        lambda m: m.layer4[-1],
    ),
    ModelFamily(
        "torchvision-resnet",
        lambda m: _is_instance(m, "torchvision.models.resnet", "ResNet"),
        "fc",
        lambda m: m.layer4[-1],
    ),
    # Pre-activation: the last stage's output is not yet normalised; ``norm`` (BN + ReLU)
    # gives the features the head pools. The head is a 1×1 convolution on them, pooled.
    ModelFamily(
        "timm-resnetv2",
        lambda m: _is_instance(m, "timm.models.resnetv2", "ResNetV2"),
        "head.fc",
        lambda m: m.norm,
    ),
    _timm_token_family("timm-vit", "timm.models.vision_transformer", "VisionTransformer"),
    _timm_token_family("timm-vit-relpos", "timm.models.vision_transformer_relpos", "VisionTransformerRelPos"),
    _timm_token_family("timm-beit", "timm.models.beit", "Beit"),
    _timm_token_family("timm-eva", "timm.models.eva", "Eva"),
    ModelFamily(
        "torchvision-vit",
        lambda m: _is_instance(m, "torchvision.models.vision_transformer", "VisionTransformer"),
        "heads.head",
        lambda m: m.encoder.layers[-1].ln_1,
        _torchvision_vit_layout,
    ),
    ModelFamily(
        "timm-convnext",
        lambda m: _is_instance(m, "timm.models.convnext", "ConvNeXt"),
        "head.fc",
        lambda m: m.stages[-1],
    ),
    # ``bn2`` (BN + activation after ``conv_head``) gives the features the head pools.
    ModelFamily(
        "timm-efficientnet",
        lambda m: _is_instance(m, "timm.models.efficientnet", "EfficientNet"),
        "classifier",
        lambda m: m.bn2,
    ),
    ModelFamily(
        "timm-swin",
        lambda m: _is_instance(m, "timm.models.swin_transformer", "SwinTransformer"),
        "head.fc",
        lambda m: m.layers[-1],
        channels_last=True,
    ),
]


def _is_instance(obj: object, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)``, without importing ``module``.

    An object of a class can only exist once its module is loaded, so a module that is
    not loaded means no. timm and torchvision stay unloaded until a model is built, which
    keeps ``captum_salve.sae`` light: an SAE-training worker does not import them.
    """
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def family_of(model: nn.Module) -> ModelFamily | None:
    """The family a model belongs to, or None.

    Example:
        >>> family_of(timm.create_model("resnet18", num_classes=3)).name
        'timm-resnet'
    """
    return next((f for f in FAMILIES if f.matches(model)), None)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without any).

    Example:
        >>> model_device(nn.Linear(4, 2)), model_device(nn.ReLU())
        (device(type='cpu'), device(type='cpu'))
    """
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_input(model: nn.Module, images: object, name: str = "images") -> torch.Tensor:
    """``images`` checked against what ``model`` takes, on its device and in its floating dtype.

    Every public function of the package that runs a model passes its inputs through
    here, so a mistake is named before torch meets it. For an image model (one with a
    convolution: every CNN, and a ViT's patch embedding) the inputs must be a 4-D
    floating-point tensor with the channel count of the first convolution and, for a
    fixed-size ViT, its image size. Floating-point inputs of another dtype are cast
    to the model's (float32 images into a float16 or bfloat16 model, say).

    Args:
        model: The classifier.
        images: (N, C, H, W) floating-point images, normalised as the model expects
            (for a model without a convolution: any tensor its forward takes).
        name: The argument's name, for the error message.

    Raises:
        TypeError: ``images`` is not a tensor.
        ValueError: Its shape, dtype, channel count or size does not fit the model.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3).half()
        >>> model_input(model, torch.rand(2, 3, 32, 32)).dtype
        torch.float16
        >>> model_input(model, torch.rand(2, 1, 32, 32))
        Traceback (most recent call last):
        ValueError: images have 1 channel but the model's first convolution (conv1) takes 3; ...
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of images (N, C, H, W), got {type(images).__name__}")
    first_conv = _first_convolution(model)
    if first_conv is not None:
        _check_images(images, name, *first_conv, fixed_image_size(model))
    if images.dtype.is_floating_point:
        dtype = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), images.dtype)
        return images.to(model_device(model), dtype)
    return images.to(model_device(model))


def _first_convolution(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The dotted name and module of the model's first ``nn.Conv2d`` (what sets the image channels), or None."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _check_images(images: torch.Tensor, name: str, conv_name: str, conv: nn.Conv2d, size: tuple | None) -> None:
    """Refuse images an image model cannot take, naming ``name`` and what was expected."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"{name} must be images of shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(
            f"{name} must be floating-point images, normalised as the model expects, got {images.dtype}; "
            "e.g. images.float() / 255, then the model's mean and std (input_normalization)"
        )
    channels = images.shape[1]
    if channels != conv.in_channels:
        raise ValueError(
            f"{name} have {channels} channel{'s' if channels != 1 else ''} but the model's first convolution "
            f"({conv_name}) takes {conv.in_channels}; convert the images (e.g. grey to RGB) or use a model for them"
        )
    given = tuple(images.shape[-2:])
    if size is not None and given != size:
        raise ValueError(
            f"{name} are {given[0]}×{given[1]} but the model takes {size[0]}×{size[1]} images (its patch "
            "embedding is built for that size); resize them, e.g. with the model's data config (input_config)"
        )


def fixed_image_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) that a ViT's patch embedding requires, or None when the model takes any size.

    Example:
        >>> fixed_image_size(timm.create_model("vit_tiny_patch16_224", img_size=64))
        (64, 64)
        >>> fixed_image_size(timm.create_model("resnet18")) is None
        True
    """
    if _is_instance(model, "torchvision.models.vision_transformer", "VisionTransformer"):
        return (model.image_size, model.image_size)
    embed = next((m for m in model.modules() if _is_instance(m, "timm.layers.patch_embed", "PatchEmbed")), None)
    if embed is not None and embed.img_size is not None and embed.strict_img_size:
        return tuple(embed.img_size)
    return None


def model_label(model: nn.Module) -> str:
    """A short name for a model, as recorded with its activations and SAEs: timm's architecture, else the class name.

    Example:
        >>> model_label(timm.create_model("resnet18", num_classes=3))
        'resnet18'
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``.

    Raises:
        ValueError: ``module`` is not part of ``model``.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> module_name(model, model.layer4[1])
        'layer4.1'
    """
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(
        f"module {type(module).__name__} is not part of the model "
        f"{type(model).__name__}; pass a module of this model or its dotted name"
    )


def get_module(model: nn.Module, module: str | nn.Module) -> nn.Module:
    """Resolve a module given by object or dotted name (``"layer4.1"``, ``"blocks.11.norm1"``).

    Raises:
        ValueError: No module of that name exists; the message lists the closest names.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> get_module(model, "layer4.1") is model.layer4[1]
        True
    """
    if isinstance(module, nn.Module):
        module_name(model, module)
        return module
    if not isinstance(module, str):
        raise TypeError(f"module must be an nn.Module or a dotted name, got {type(module).__name__}")
    names = dict(model.named_modules())
    if module in names:
        return names[module]
    close = difflib.get_close_matches(module, list(names), n=5, cutoff=0.5)
    hint = f"; closest names: {', '.join(close)}" if close else ""
    raise ValueError(f"the model {type(model).__name__} has no module named {module!r}{hint}")


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier's final linear layer and its dotted name.

    Known families use their recorded head; any other timm model uses
    ``get_classifier()``. A head that is a 1×1 ``nn.Conv2d`` on pooled features
    (timm's ResNetV2) is a linear map too: it is returned as an ``nn.Linear`` that
    shares its weight, viewed as (K, M), and its bias, so reading or writing one
    reads or writes the model. That view is not called by the model's forward:
    hook the module the returned name names (:class:`~captum_salve.sites.Site`
    does), not the view.

    Raises:
        ValueError: No linear head was found (the message lists the linear layers
            seen), or the model combines several heads (DeiT distilled), which no
            single head's input describes.

    Example:
        >>> find_head(timm.create_model("resnet18", num_classes=3))[0]
        'fc'
        >>> find_head(timm.create_model("resnetv2_50", num_classes=3))[1]    # its 1×1 convolution, as a view
        Linear(in_features=2048, out_features=3, bias=True)
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, tuple):
        raise ValueError(_several_heads(model, classifier))
    family = family_of(model)
    head = model.get_submodule(family.head) if family is not None else classifier
    if isinstance(head, nn.Linear):
        return module_name(model, head), head
    if _is_pointwise(head):
        return module_name(model, head), _linear_view(head)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = (
        f"its classifier is {type(head).__name__}"
        if head is not None
        else f"its nn.Linear layers are {linears[-3:] or 'none'}"
    )
    raise ValueError(
        f"no linear classifier head found on {type(model).__name__}: {found}. "
        "Use a timm or torchvision ResNet / ViT with num_classes > 0, or add a "
        "ModelFamily for this architecture to captum_salve.models.FAMILIES"
    )


def _several_heads(model: nn.Module, heads: tuple) -> str:
    names = ", ".join(module_name(model, head) for head in heads)
    return (
        f"{type(model).__name__} has {len(heads)} classifier heads ({names}), each reading its own token, and "
        "its logits combine them (DeiT distilled: head reads token 0, head_dist token 1, and the logits are "
        "their average at inference), so no single head's input describes the model's output and SAE edits, "
        "alpha_crit and sweeps of it would be wrong; use a model with one head (e.g. deit_small_patch16_224)"
    )


def _is_pointwise(module: nn.Module | None) -> bool:
    """A 1×1 convolution mixing channels only: on pooled (N, M, 1, 1) features it is a linear map."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), "valid")
    )


def _linear_view(conv: nn.Conv2d) -> nn.Linear:
    """An ``nn.Linear`` whose weight is ``conv``'s weight viewed as (K, M) and whose bias is ``conv``'s."""
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None, device="meta")
    linear.weight = nn.Parameter(
        conv.weight.view(conv.out_channels, conv.in_channels), requires_grad=conv.weight.requires_grad
    )
    if conv.bias is not None:
        linear.bias = conv.bias
    return linear


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-FAM uses by default: the feature map the head pools; for token models, the last block's norm1.

    ``layer4[-1]`` for ResNets, ``norm`` for ResNetV2, ``stages[-1]`` for ConvNeXt,
    ``bn2`` for EfficientNet, ``layers[-1]`` for Swin (channels-last), and
    ``blocks[-1].norm1`` for timm's ViT, DeiT, ViT-relpos, BEiT and EVA
    (``encoder.layers[-1].ln_1`` for torchvision's ViT).

    Raises:
        ValueError: The model is of no known family; pass a layer explicitly.

    Example:
        >>> model = timm.create_model("vit_tiny_patch16_224")
        >>> module_name(model, default_cam_layer(model))
        'blocks.11.norm1'
    """
    family = family_of(model)
    if family is None:
        raise ValueError(
            f"no default Grad-FAM layer is known for {type(model).__name__}; pass layer= (a module or its dotted "
            "name): the last block or stage whose output is the feature map the head pools, "
            "or the first norm of the last block for a transformer"
        )
    return family.cam_layer(model)


def token_layout(model: nn.Module) -> TokenLayout | None:
    """Prefix-token count and patch grid for token models; None for convolutional ones.

    Example:
        >>> token_layout(timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8))
        TokenLayout(prefix_tokens=1, grid=(8, 8))
        >>> token_layout(timm.create_model("resnet18")) is None
        True
    """
    family = family_of(model)
    if family is None or family.token_layout is None:
        return None
    return family.token_layout(model)


def feature_layout(model: nn.Module, layer: nn.Module) -> Literal["channels_first", "channels_last"]:
    """Whether a spatial layer of ``model`` gives (N, C, h, w) or (N, h, w, C) outputs.

    A convolution always gives channels first. The other layers of a family that
    records ``channels_last`` (timm's Swin) give channels last. A model of no family
    that declares channels-last features (timm's ``output_fmt="NHWC"``: Swin V2,
    MambaOut, Sequencer, ...) is refused: which of its layers are channels last
    cannot be told from here.

    Raises:
        ValueError: A model of no known family declares channels-last features.

    Example:
        >>> swin = timm.create_model("swin_tiny_patch4_window7_224")
        >>> feature_layout(swin, swin.layers[-1]), feature_layout(swin, swin.patch_embed.proj)
        ('channels_last', 'channels_first')
    """
    if isinstance(layer, nn.Conv2d):
        return "channels_first"
    family = family_of(model)
    if family is not None:
        return "channels_last" if family.channels_last else "channels_first"
    if str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC"):
        raise ValueError(
            f"{type(model).__name__} declares channels-last features (output_fmt NHWC), and no family records "
            "which of its layers give (N, h, w, C); pass reshape_transform mapping the layer's output to "
            "(N, C, h, w), e.g. lambda x: x.permute(0, 3, 1, 2)"
        )
    return "channels_first"


def input_config(model: nn.Module) -> dict:
    """The model's timm data config (``input_size``, ``mean``, ``std``, interpolation, crop).

    timm's ``resolve_model_data_config``: the model's ``pretrained_cfg`` (which
    :func:`create_model` fills from a checkpoint's saved config and the caller's
    ``data_config``), and ImageNet's defaults for any other model (torchvision's included).

    Example:
        >>> input_config(timm.create_model("resnet18"))["input_size"]
        (3, 224, 224)
    """
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a model expects its [0, 1] images to be normalised with (from :func:`input_config`).

    Example:
        >>> input_normalization(timm.create_model("resnet18"))
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    """
    config = input_config(model)
    return tuple(config["mean"]), tuple(config["std"])


def describe_input_config(model: nn.Module) -> str:
    """The data config a model's images are prepared with, and where each entry came from, in one line.

    Example:
        >>> describe_input_config(create_model("resnet18", data_config={"input_size": (3, 64, 64)}))
        '3×64×64, bicubic, crop_pct 0.95 (center), mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); input_size
        from data_config, the rest from the model's pretrained_cfg'
    """
    config = input_config(model)
    c, h, w = config["input_size"]
    text = (
        f"{c}×{h}×{w}, {config['interpolation']}, crop_pct {config['crop_pct']:g} "
        f"({config.get('crop_mode') or 'center'}), mean {_rounded(config['mean'])}, std {_rounded(config['std'])}"
    )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    by_source: dict[str, list[str]] = {}
    for key, source in cfg.get(SOURCES_KEY, {}).items():
        by_source.setdefault(source, []).append(key)
    parts = [f"{', '.join(keys)} from {source}" for source, keys in by_source.items()]
    default = "the model's pretrained_cfg" if "architecture" in cfg else "timm's ImageNet defaults"
    return f"{text}; {', '.join([*parts, f'the rest from {default}'] if parts else [f'all from {default}'])}"


def _rounded(values: tuple[float, ...]) -> str:
    return f"({', '.join(f'{v:.4g}' for v in values)})"


# The data-config entries a checkpoint's saved config or the caller may set, as timm names them.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
# Where create_model records, in the model's pretrained_cfg, which source set each data-config entry.
SOURCES_KEY = "data_config_sources"


@dataclass(frozen=True)
class SavedConfig:
    """What a checkpoint says about how its model was built and fed.

    Read from inside the file (a timm training checkpoint's ``args``, a ``pretrained_cfg``
    entry of a ``.pth`` dict, or the ``pretrained_cfg`` metadata of a ``.safetensors`` file
    as ``captum-salve edit`` writes it), else from a file beside it (timm's hub layout
    ``config.json`` with ``pretrained_cfg`` and ``model_args``, or the ``args.yaml`` timm's
    ``train.py`` writes into its output folder).

    Attributes:
        data_config: Entries of :data:`DATA_CONFIG_KEYS` it sets.
        model_kwargs: Architecture arguments the model was created with.
        source: Where they were read, for messages and the report (None: nowhere).

    Example:
        >>> saved_config("output/train/20261126-resnet18/model_best.pth.tar").data_config
        {'input_size': (3, 64, 64), 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
    """

    data_config: dict
    model_kwargs: dict
    source: str | None


def saved_config(checkpoint_path: str | Path) -> SavedConfig:
    """The data config and model arguments saved inside or beside a checkpoint (see :class:`SavedConfig`).

    Raises:
        ValueError: A saved config that cannot be read or holds a bad entry (naming the file).

    Example:
        >>> saved_config("model.safetensors").source is None    # a bare state_dict says nothing
        True
    """
    path = Path(checkpoint_path)
    found = _config_inside(path)
    if found is None:
        found = next((c for c in (_hub_config(path.parent), _train_args(path.parent)) if c is not None), None)
    if found is None:
        return SavedConfig({}, {}, None)
    values, model_kwargs, source = found
    data = {key: values[key] for key in DATA_CONFIG_KEYS if values.get(key) not in (None, "", [])}
    if values.get("input_size") in (None, []) and values.get("img_size") is not None:  # timm train.py's --img-size
        data["input_size"] = (3, int(values["img_size"]), int(values["img_size"]))
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"{source}: the saved model arguments must be a mapping, got {type(model_kwargs).__name__}")
    return SavedConfig(check_data_config(data, source), dict(model_kwargs), source)


def _config_inside(path: Path) -> tuple[dict, dict, str] | None:
    """A config saved in the checkpoint file itself, or None."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
        if "pretrained_cfg" not in metadata:
            return None
        try:
            return json.loads(metadata["pretrained_cfg"]), {}, f"the metadata of {str(path)!r}"
        except json.JSONDecodeError as error:
            raise ValueError(f"the pretrained_cfg metadata of {str(path)!r} is not JSON: {error}") from None
    try:  # timm's training checkpoints keep their argparse.Namespace of settings in "args"
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, OSError, ValueError):
        return None  # the state_dict reader names what is wrong with the file
    if not isinstance(content, dict):
        return None
    if isinstance(content.get("pretrained_cfg"), dict):
        return content["pretrained_cfg"], {}, f"the pretrained_cfg saved in {str(path)!r}"
    args = content.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if isinstance(args, dict):
        return args, args.get("model_kwargs") or {}, f"the training args saved in {str(path)!r}"
    return None


def _hub_config(folder: Path) -> tuple[dict, dict, str] | None:
    """The config of timm's hub layout: ``config.json`` with ``pretrained_cfg`` and ``model_args``."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} beside the checkpoint is not JSON: {error}") from None
    if not isinstance(config, dict) or "pretrained_cfg" not in config:
        return None  # another tool's config.json
    return config["pretrained_cfg"] or {}, config.get("model_args") or {}, str(path)


def _train_args(folder: Path) -> tuple[dict, dict, str] | None:
    """The ``args.yaml`` timm's ``train.py`` writes beside its checkpoints."""
    path = folder / "args.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        args = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{str(path)!r} beside the checkpoint is not YAML: {error}") from None
    if not isinstance(args, dict):
        raise ValueError(f"{str(path)!r} beside the checkpoint must hold a mapping of settings")
    return args, args.get("model_kwargs") or {}, str(path)


def check_data_config(config: object, name: str = "data_config", *, labels: dict[str, str] | None = None) -> dict:
    """``config`` checked as (part of) a timm data config, with tuples for sequences.

    Args:
        config: Entries of :data:`DATA_CONFIG_KEYS`.
        name: What ``config`` is called in messages.
        labels: What each entry is called in messages, where not ``"<name> <key>"`` (a command-line flag, say).

    Raises:
        ValueError: An unknown key or a bad value, naming the entry and what was expected.

    Example:
        >>> check_data_config({"input_size": [3, 64, 64], "mean": [0.5]})
        {'input_size': (3, 64, 64), 'mean': (0.5,)}
    """
    if not isinstance(config, dict):
        raise TypeError(f"{name} must be a dict of {DATA_CONFIG_KEYS} entries, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{name} has unknown entries {unknown}; the data config takes {DATA_CONFIG_KEYS}")
    checked = {}
    for key, value in config.items():
        label = (labels or {}).get(key, f"{name} {key}")
        if key == "input_size":
            if not _numbers(value, int) or len(value) != 3 or min(value) < 1:
                raise ValueError(f"{label} must be (channels, height, width) of positive ints, got {value!r}")
        elif key in ("mean", "std"):
            if not _numbers(value, float) or not value or (key == "std" and min(value) <= 0):
                wanted = "positive numbers" if key == "std" else "numbers"
                raise ValueError(f"{label} must be one or one per channel of {wanted}, got {value!r}")
        elif key == "crop_pct":
            value = check_fraction(value, label, above_zero=True)  # the share of the resized image kept; 1: no crop
        elif key == "interpolation" and value not in INTERPOLATIONS:
            raise ValueError(f"{label} must be one of {INTERPOLATIONS}, got {value!r}")
        elif key == "crop_mode" and value not in CROP_MODES:
            raise ValueError(f"{label} must be one of {CROP_MODES}, got {value!r}")
        checked[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return checked


def _numbers(value: object, kind: type) -> bool:
    """Whether ``value`` is a list or tuple of numbers of ``kind`` (ints count as floats; bools never)."""
    allowed = (int,) if kind is int else (int, float)
    return isinstance(value, (list, tuple)) and all(isinstance(v, allowed) and not isinstance(v, bool) for v in value)


def set_input_config(model: nn.Module, layers: list[tuple[str, dict]]) -> nn.Module:
    """Write data-config entries into the model's ``pretrained_cfg``, later layers winning, and record their sources.

    Each layer is ``(source, entries)``; a one-value ``mean`` / ``std`` is repeated per channel.
    A ViT whose patch embedding takes one image size gets that size when no layer sets it.

    Raises:
        ValueError: The input size's channels differ from the model's first convolution, a
            per-channel mean or std has another length, or a fixed-size model is given another size.

    Example:
        >>> model = set_input_config(timm.create_model("resnet18"), [("--input-size", {"input_size": (3, 64, 64)})])
        >>> input_config(model)["input_size"]
        (3, 64, 64)
    """
    entries: dict = {}
    sources: dict[str, str] = dict((getattr(model, "pretrained_cfg", None) or {}).get(SOURCES_KEY, {}))
    for source, layer in layers:
        for key, value in layer.items():
            entries[key], sources[key] = value, source
    size = fixed_image_size(model)
    if size is not None and "input_size" not in entries:
        base = input_config(model)["input_size"]
        if tuple(base[1:]) != size:
            entries["input_size"], sources["input_size"] = (base[0], *size), "the model's patch embedding"
    channels = (entries.get("input_size") or input_config(model)["input_size"])[0]
    first_conv = _first_convolution(model)
    if first_conv is not None and channels != first_conv[1].in_channels:
        raise ValueError(
            f"input_size from {sources.get('input_size', 'the model')} has {channels} channels but the model's first "
            f"convolution takes {first_conv[1].in_channels}"
        )
    if size is not None and tuple(entries.get("input_size", (0, *size))[1:]) != size:
        raise ValueError(
            f"input_size {entries['input_size']} from {sources['input_size']} does not fit the model, whose patch "
            f"embedding takes {size[0]}×{size[1]} images; build it for that size (e.g. model_kwargs img_size)"
        )
    for key in ("mean", "std"):
        if key in entries and len(entries[key]) != channels:
            if len(entries[key]) != 1:
                raise ValueError(f"{key} from {sources[key]} has {len(entries[key])} values for {channels} channels")
            entries[key] = entries[key] * channels
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **entries, SOURCES_KEY: sources}
    return model


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    model_kwargs: dict | None = None,
    data_config: dict | None = None,
) -> nn.Module:
    """Build a timm model, or a torchvision one when the name starts with ``torchvision/``, with its data config.

    The model's data config (:func:`input_config`, which :func:`~captum_salve.data.image_folder`
    and the command line read) comes from three places, each overriding the one before:
    the architecture's ``pretrained_cfg``; the config saved inside or beside the checkpoint
    (:func:`saved_config`); ``data_config``. :func:`describe_input_config` says which set what.

    Args:
        name: A timm model name (``"resnet18"``, ``"vit_base_patch16_224"``) or
            ``"torchvision/<builder>"`` (``"torchvision/resnet18"``, ``"torchvision/vit_b_16"``).
        pretrained: Load the library's pretrained weights (needs internet or a warm cache).
        checkpoint_path: A state_dict file (``.safetensors``, ``.pth``, timm's ``.pth.tar``) to load.
        num_classes: Size of the classifier head; None takes the checkpoint's head
            size when a checkpoint is given, else the library default.
        model_kwargs: Architecture arguments for the builder (``{"img_size": 64, "depth": 6}``),
            over those saved with the checkpoint.
        data_config: Data-config entries (:data:`DATA_CONFIG_KEYS`, timm's names) over the others.

    Raises:
        ValueError: Unknown model name, bad model arguments or data config, or a checkpoint that
            does not fit the model.

    Example:
        >>> create_model("resnet18", num_classes=10).fc.out_features
        10
        >>> torch.save(create_model("resnet18", num_classes=3).state_dict(), "rn3.pth")
        >>> create_model("resnet18", checkpoint_path="rn3.pth").fc.out_features
        3
        >>> vit = create_model("vit_tiny_patch16_224", model_kwargs={"img_size": 64}, data_config={"mean": [0.5]})
        >>> input_config(vit)["input_size"], input_config(vit)["mean"]
        ((3, 64, 64), (0.5, 0.5, 0.5))
    """
    given = check_data_config(data_config) if data_config is not None else {}
    if model_kwargs is not None and not (
        isinstance(model_kwargs, dict) and all(isinstance(k, str) for k in model_kwargs)
    ):
        raise TypeError(f"model_kwargs must be a dict of argument names to values, got {model_kwargs!r}")
    state, saved = None, SavedConfig({}, {}, None)
    if checkpoint_path is not None:
        state = _read_checkpoint(checkpoint_path)
        saved = saved_config(checkpoint_path)
    kwargs = {**saved.model_kwargs, **(model_kwargs or {})}
    model = _build(name, pretrained, num_classes, kwargs)
    if state is not None:
        rows = _head_rows(model, state) if num_classes is None else None
        if rows is not None:
            model = _build(name, pretrained, rows, kwargs)
        _load_checkpoint(model, state, Path(checkpoint_path), kwargs)
    layers = [(saved.source, saved.data_config)] if saved.source else []
    return set_input_config(model, [*layers, ("data_config", given)])


def _head_rows(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The checkpoint's head size where it differs from the model's, else None (also for a model without a head)."""
    try:
        name, head = find_head(model)
    except ValueError:
        return None  # no single linear head: the checkpoint loads as it is or is refused with the keys that differ
    weight = state.get(f"{name}.weight")
    if weight is None or weight.shape[0] == head.out_features:
        return None
    return int(weight.shape[0])


def _build(name: str, pretrained: bool, num_classes: int | None, model_kwargs: dict) -> nn.Module:
    """The named timm or torchvision model, with a head of ``num_classes`` outputs (None: the library's)."""
    try:
        return _build_unchecked(name, pretrained, num_classes, model_kwargs)
    except TypeError as error:  # an argument the architecture's constructor does not take
        if not model_kwargs:
            raise
        raise ValueError(f"{name} cannot be built with the model arguments {model_kwargs}: {error}") from None


def _build_unchecked(name: str, pretrained: bool, num_classes: int | None, model_kwargs: dict) -> nn.Module:
    import timm
    import torchvision

    if name.startswith(TORCHVISION_PREFIX):
        builder = name[len(TORCHVISION_PREFIX) :]
        known = torchvision.models.list_models(module=torchvision.models)
        if builder not in known:
            close = difflib.get_close_matches(builder, known, n=3)
            raise ValueError(f"torchvision has no model {builder!r}; closest: {', '.join(close) or 'none'}")
        kwargs = {**model_kwargs, "weights": "DEFAULT" if pretrained else None}
        if num_classes is not None and not pretrained:
            kwargs["num_classes"] = num_classes
        model = torchvision.models.get_model(builder, **kwargs)
        if num_classes is not None and pretrained:
            _, head = find_head(model)
            _replace_head(model, nn.Linear(head.in_features, num_classes))
        return model
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ValueError(f"timm does not know the model {name!r}; closest: {', '.join(close) or 'none'}")
    kwargs = model_kwargs if num_classes is None else {**model_kwargs, "num_classes": num_classes}
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def keep_classes(model: nn.Module, classes: list[int]) -> nn.Module:
    """Cut the head down to some of its classes, in the given order (in place).

    A model pretrained on ImageNet classifies Imagenette's ten classes with the ten
    matching rows of its head, no fine-tuning needed.

    Example:
        >>> model = keep_classes(timm.create_model("resnet18"), [0, 217, 482])
        >>> model.fc.out_features
        3
    """
    name, head = find_head(model)
    if not classes or not all(0 <= c < head.out_features for c in classes):
        raise ValueError(
            f"classes must be a non-empty list of head rows in [0, {head.out_features - 1}], got {classes}"
        )
    like = {"bias": head.bias is not None, "device": head.weight.device, "dtype": head.weight.dtype}
    if isinstance(model.get_submodule(name), nn.Conv2d):  # a 1×1 convolution head stays one
        kept = nn.Conv2d(head.in_features, len(classes), 1, **like)
        rows = _linear_view(kept)
    else:
        kept = rows = nn.Linear(head.in_features, len(classes), **like)
    with torch.no_grad():
        rows.weight.copy_(head.weight[classes])
        if head.bias is not None:
            rows.bias.copy_(head.bias[classes])
    _replace_head(model, kept)
    return model


def _replace_head(model: nn.Module, head: nn.Module) -> None:
    name, _ = find_head(model)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, head)


def _read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict file read with timm's reader, tensors only."""
    import timm.models

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint_path {str(path)!r} is not a file")
    # timm reads .safetensors and .pth alike, unwraps "state_dict" / "model" / EMA
    # entries and strips DataParallel's "module." prefixes; weights_only refuses pickled code.
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in first_line or isinstance(error, pickle.UnpicklingError):
            raise ValueError(
                f"the checkpoint {str(path)!r} holds Python objects besides tensors, which could run code when "
                "unpickled; it was not loaded. Save the model's state_dict (torch.save(model.state_dict(), path)) "
                "or a .safetensors file instead"
            ) from None
        raise ValueError(f"the checkpoint {str(path)!r} cannot be read: {first_line}") from None
    return state


def _load_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], path: Path, model_kwargs: dict) -> None:
    """Load a checkpoint's state into ``model``, refusing one that does not fit with the reason."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
    if resized:
        key = resized[0]
        problems.append(
            f"{len(resized)} tensors of another shape "
            f"(e.g. {key!r}: {tuple(state[key].shape)}, the model has {tuple(expected[key].shape)})"
        )
    if problems:
        raise ValueError(
            f"the checkpoint {str(path)!r} does not fit {type(model).__name__}"
            f"{f' built with the model arguments {model_kwargs}' if model_kwargs else ''}: {'; '.join(problems)}; "
            "check the model name, num_classes and the model arguments (model_kwargs, --model-kwargs: e.g. img_size, "
            "patch_size, depth for a ViT)"
        )
    model.load_state_dict(state)
