"""The package's own small classifiers, trained on the digits canvas on first use and cached.

A timm ResNet-18 (unchanged architecture) and a small timm ViT (patch 8 on the
64 × 64 canvas, 4 blocks) stand in for the paper's ImageNet-pretrained models so
that the whole pipeline runs on a laptop CPU with no download.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from captum_salve.data import CanvasConfig, DigitsCanvas
from captum_salve.files import atomic_path
from captum_salve.sites import as_device, eval_mode

__all__ = ["ARCHITECTURES", "TrainedClassifier", "cache_dir", "digits_classifier", "evaluate_accuracy"]

_CACHE_VERSION = 2


@dataclass(frozen=True)
class Architecture:
    """A timm model name with its overrides, and how long to train it."""

    timm_name: str
    overrides: dict
    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 0.05
    standardize: bool = False


# A ViT trained from scratch learns these dark, mostly empty canvases far faster
# on standardised pixels; the standardisation is folded into its patch embedding
# afterwards, so every model here takes plain [0, 1] images.
ARCHITECTURES = {
    "resnet18": Architecture("resnet18", {}, epochs=12, lr=1e-3),
    "vit": Architecture(
        "vit_tiny_patch16_224",
        {"patch_size": 8, "depth": 4, "embed_dim": 128, "num_heads": 4, "mlp_ratio": 2.0},
        epochs=80,
        lr=5e-4,
        standardize=True,
    ),
}
_PIXEL_MEAN, _PIXEL_STD = 0.1, 0.2


@dataclass
class TrainedClassifier:
    """A digits-canvas classifier and what its training measured.

    Attributes:
        model: The timm model, in eval mode, expecting [0, 1] images (its
            ``pretrained_cfg`` says mean 0, std 1).
        arch: Key in :data:`ARCHITECTURES`.
        test_accuracy: Accuracy on the digits-canvas test split (seed 0).
        train_seconds: Wall-clock of the training run that produced the weights.
        path: Where the weights are cached.

    Example:
        >>> clf = digits_classifier("vit")
        >>> clf.arch, clf.path.suffix
        ('vit', '.safetensors')
    """

    model: nn.Module
    arch: str
    test_accuracy: float
    train_seconds: float
    path: Path


def cache_dir() -> Path:
    """``$CAPTUM_SALVE_CACHE``, else ``$XDG_CACHE_HOME/captum_salve``, else ``~/.cache/captum_salve``.

    Example:
        >>> os.environ["CAPTUM_SALVE_CACHE"] = "/tmp/salve-cache"
        >>> cache_dir()
        PosixPath('/tmp/salve-cache')
    """
    if "CAPTUM_SALVE_CACHE" in os.environ:
        return Path(os.environ["CAPTUM_SALVE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "captum_salve"


def build_digits_model(arch: str, config: CanvasConfig) -> nn.Module:
    """An untrained model of one of :data:`ARCHITECTURES`, sized for the canvas."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    spec = ARCHITECTURES[arch]
    size = config.canvas_size
    extra = {"img_size": size} if "vit" in spec.timm_name else {}
    model = timm.create_model(spec.timm_name, num_classes=10, **extra, **spec.overrides)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, size, size),
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "crop_pct": 1.0,
        "num_classes": 10,
    }
    return model


def digits_classifier(
    arch: str = "resnet18",
    *,
    config: CanvasConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    retrain: bool = False,
    seed: int = 0,
) -> TrainedClassifier:
    """The digits-canvas classifier of an architecture, trained now or loaded from the cache.

    Each epoch draws the training digits at fresh positions (a new canvas seed), so
    1,348 digits go a long way. The weights and a JSON report are cached under
    :func:`cache_dir`, keyed by the architecture, the recipe, the canvas and the seed.

    Args:
        arch: ``"resnet18"`` or ``"vit"``.
        config: Canvas settings (default :class:`CanvasConfig`).
        device: Where to train and return the model; default CUDA when present.
        progress: Show a progress bar.
        retrain: Ignore the cache.
        seed: Seed of the weight initialisation and the batch order.

    Example:
        >>> clf = digits_classifier("resnet18")
        >>> clf.test_accuracy > 0.95
        True
    """
    config = config or CanvasConfig()
    device = as_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_digits_model(arch, config)
    spec = ARCHITECTURES[arch]
    key = json.dumps([_CACHE_VERSION, arch, asdict(spec), config.key(), seed], sort_keys=True)
    stem = f"digits-{arch}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    weights, report = cache_dir() / f"{stem}.safetensors", cache_dir() / f"{stem}.json"
    if weights.is_file() and report.is_file() and not retrain:
        model.load_state_dict(load_file(str(weights)))
        facts = json.loads(report.read_text())
        return TrainedClassifier(model.to(device).eval(), arch, facts["test_accuracy"], facts["train_seconds"], weights)

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_digits_model(arch, config).to(device)
        _fit(model, spec, config, device, progress, seed)
    seconds = time.perf_counter() - start
    accuracy = evaluate_accuracy(model, DigitsCanvas("test", config=config), device=device)
    with atomic_path(weights) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}, str(tmp))
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps({"arch": arch, "test_accuracy": accuracy, "train_seconds": seconds, "key": key}))
    return TrainedClassifier(model.eval(), arch, accuracy, seconds, weights)


def _fit(
    model: nn.Module, spec: Architecture, config: CanvasConfig, device: torch.device, progress: bool, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    n_train = len(DigitsCanvas("train", config=config, seed=1))
    steps_per_epoch = -(-n_train // spec.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.15
    )
    scale = 1 / _PIXEL_STD if spec.standardize else 1.0
    shift = -_PIXEL_MEAN / _PIXEL_STD if spec.standardize else 0.0
    model.train()
    bar = tqdm(total=spec.epochs * steps_per_epoch, desc=f"train {spec.timm_name}", disable=not progress)
    for epoch in range(spec.epochs):
        data = DigitsCanvas("train", config=config, seed=epoch + 1)
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), spec.batch_size):
            index = order[start : start + spec.batch_size]
            images, labels = data.images[index].to(device), data.labels[index].to(device)
            loss = F.cross_entropy(model(images * scale + shift), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    if spec.standardize:
        _fold_affine_input(model.patch_embed.proj, scale, shift)
    model.eval()


@torch.no_grad()
def _fold_affine_input(conv: nn.Conv2d, scale: float, shift: float) -> None:
    """Make ``conv(x)`` equal the old ``conv(scale * x + shift)`` (exact for an unpadded conv)."""
    if conv.padding not in ((0, 0), "valid"):
        raise ValueError("only an unpadded convolution can absorb an input standardisation exactly")
    conv.bias.add_(conv.weight.sum(dim=(1, 2, 3)) * shift)
    conv.weight.mul_(scale)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, data: DigitsCanvas, *, device: torch.device | str | None = None, batch_size: int = 256
) -> float:
    """Top-1 accuracy of a classifier on a digits canvas.

    Example:
        >>> clf = digits_classifier("resnet18")
        >>> evaluate_accuracy(clf.model, DigitsCanvas("test", seed=1))    # the test digits at new positions
    """
    device = device or next(model.parameters()).device
    correct = 0
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            logits = model(data.images[start : start + batch_size].to(device))
            correct += (logits.argmax(1).cpu() == data.labels[start : start + batch_size]).sum().item()
    return correct / len(data)
