"""The red-team catalogue of issue 12 as tests: no silent wrong answer, no traceback for a mistake, nothing lost.

:data:`CASES` holds one row per single call; its id starts with the verdict the call
must get: ``clear`` (an error of the given type whose message holds the given
phrases) or ``worked`` (a result the row's check finds right). Every row also checks
that the model it was handed is as it was: weights, device, train/eval modes, hooks.
The tests after it are the cases that take several steps (the command line, reruns).
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import timm
import torch
from matplotlib.text import Text
from PIL import Image as PILImage
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import TensorDataset

from captum_salve import (
    ActivationSet,
    ActivationStore,
    GradFAM,
    HeadEdit,
    Site,
    SparseAutoencoder,
    alpha_crit,
    alpha_sweep,
    collect_activations,
    cue_reliance,
    edit_model,
    plots,
    sae_metrics,
    train_sae,
)
from captum_salve.analysis import ControlGoal, control_directions, match_features
from captum_salve.attr import FeatureCodes, TokenGradCam, deletion_score, maximize_feature, render_maps
from captum_salve.cli import main
from captum_salve.data import CanvasConfig, load_rgb
from captum_salve.models import create_model
from captum_salve.pipeline import run_pipeline
from captum_salve.report import read_summaries
from tests.helpers import HeadOnly, assert_one_line_error, hook_count, image_tree, random_sae, small_timm_vit
from tests.pipeline.examples import TOY_CONFIG, hand_built_summary, toy_inputs


class Case(NamedTuple):
    """One catalogued call: ``call(tmp_path, resnet)``, and either the error it must raise or a check of its result."""

    call: Callable[[Path, nn.Module], object]
    raises: type[Exception] | None  # None: the call must work
    phrases: tuple[str, ...] = ()  # each must be in the error message
    check: Callable[[object], bool] | None = None  # for a call that works: its result is right


def _nan_acts():
    acts = torch.randn(20, 4)
    acts[3, 1] = float("nan")
    acts[7, 0] = float("inf")
    return train_sae(acts, 8, epochs=1, progress=False)


def _sae_with_nan_weights(tmp_path):
    sae = random_sae(4, d_latent=8)
    sae.save(tmp_path / "sae")
    with torch.no_grad():
        sae.encoder.weight[2, 1] = float("nan")
    save_model(sae, str(tmp_path / "sae" / "model.safetensors"))
    return SparseAutoencoder.load(tmp_path / "sae")


SAE_512 = random_sae(512)


def _both(attribute, images, target):
    """Maps for a NumPy integer target and for the same Python int."""
    return [attribute(images, target=np.int64(target)), attribute(images, target=target)]


class _Items(torch.utils.data.Dataset):
    """Two items made by ``item(index)``: a dataset of whatever a user's dataset might yield."""

    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return self.item(index)


def _resume_from_junk(tmp_path):
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return train_sae(torch.randn(20, 4), 8, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False)


def _three_class_checkpoint_loaded(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "model.pth")
    return create_model("resnet18", checkpoint_path=tmp_path / "model.pth")


def _with_nan_decoder(sae: SparseAutoencoder) -> SparseAutoencoder:
    other = copy.deepcopy(sae)
    with torch.no_grad():
        other.decoder.weight[0, 0] = float("nan")
    return other


ACTS_512 = torch.rand(3, 512, generator=torch.Generator().manual_seed(2)) * 2


def _headless_checkpoint_loaded(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "features.pth")
    return create_model("resnet18", checkpoint_path=tmp_path / "features.pth", num_classes=0)


def _save_nan_sae_over_a_good_one(tmp_path):
    good = random_sae(4, d_latent=8)
    good.save(tmp_path / "sae")
    bad = random_sae(4, d_latent=8)
    with torch.no_grad():
        bad.encoder.weight[0, 0] = float("nan")
    try:
        bad.save(tmp_path / "sae")
    finally:  # the folder still holds the good SAE
        assert torch.equal(SparseAutoencoder.load(tmp_path / "sae").encoder.weight, good.encoder.weight)


def _load_junk_activations(tmp_path):
    (tmp_path / "acts.safetensors").write_bytes(b"not a safetensors file at all")
    return ActivationSet.load(tmp_path / "acts.safetensors")


def _edit_overflowing_float32():
    model = HeadOnly(torch.nn.Linear(4, 3))
    return edit_model(model, random_sae(4, d_latent=8), 2, 1e300, rule="project")


IMAGES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _same_rows_as_float32(resnet: nn.Module, dtype: torch.dtype, images_dtype: torch.dtype = torch.float32):
    """Activations of ``resnet`` cast to ``dtype``, against those of its float32 copy on the same rounded weights."""
    low = copy.deepcopy(resnet).to(dtype)
    got = collect_activations(low, IMAGES.to(images_dtype), progress=False).features
    want = collect_activations(low.float(), IMAGES.to(dtype).float(), progress=False).features
    return got, want


def _sweeps_agree(resnet: nn.Module) -> bool:
    """alpha_sweep on a bfloat16 model equals the sweep on its weights in float32 (the sweep runs in float64)."""
    sae, acts = random_sae(512), collect_activations(resnet, torch.rand(12, 3, 32, 32), progress=False)
    acts.labels = torch.arange(12) % 4
    low = copy.deepcopy(resnet).to(torch.bfloat16)
    models = (low, copy.deepcopy(low).float())  # .float() alone would convert low itself
    sweeps = [alpha_sweep(m, sae, 3, acts, [0, 1, 10], rule="project") for m in models]
    return torch.equal(sweeps[0].confusion, sweeps[1].confusion)


def _grad_fam_in_both_dtypes(resnet: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-FAM maps of ``resnet`` cast to bfloat16, and of its float32 copy on the same rounded weights."""
    low = copy.deepcopy(resnet).to(torch.bfloat16)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = GradFAM(low, "layer4.1", SAE_512).attribute(images, target=1).float()
    want = GradFAM(copy.deepcopy(low).float(), "layer4.1", SAE_512).attribute(images.bfloat16().float(), target=1)
    return got.detach(), want.detach()


def _codes_in_both_dtypes(sae: SparseAutoencoder, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of ``acts`` from ``sae`` in bfloat16, and from its float32 copy on the same rounded weights."""
    low = sae.to(torch.bfloat16)
    return low.encode_all(acts), copy.deepcopy(low).float().encode_all(acts.bfloat16().float())


def _figure_text(fig) -> str:
    fig.savefig(io.BytesIO(), format="png")  # renders: matplotlib's own errors would come here
    return " ".join(t.get_text() for t in fig.findobj(Text))


_VIT = small_timm_vit(4)
_INF = torch.full((3,), float("inf"))

# The catalogue. A case's id starts with its verdict: "clear" (a named error) or "worked".
CASES = {
    # non-finite numbers
    "clear: training activations with NaN and Inf": Case(
        lambda tmp_path, resnet: _nan_acts(),
        ValueError,
        ("acts holds 2 non-finite values", "index (3, 1)", "before training"),
    ),
    "clear: an SAE file with a NaN weight": Case(
        lambda tmp_path, resnet: _sae_with_nan_weights(tmp_path),
        ValueError,
        ("'encoder.weight'", "1 non-finite value", "(2, 1)", "damaged"),
    ),
    "clear: an edit too strong for a float32 head": Case(
        lambda tmp_path, resnet: _edit_overflowing_float32(),
        ValueError,
        ("edited head's weight (torch.float32)", "too strong for rule 'project'"),
    ),
    "clear: activation maximisation with an infinite penalty": Case(
        lambda tmp_path, resnet: maximize_feature(resnet, random_sae(512), 1, steps=1, l2=float("inf")),
        ValueError,
        ("l2 must be a finite number >= 0", "inf"),
    ),
    # devices
    "clear: activations collected on the meta device": Case(
        lambda tmp_path, resnet: collect_activations(resnet, IMAGES, device="meta", progress=False),
        ValueError,
        ("device 'meta' cannot hold data",),
    ),
    "clear: a device torch does not know": Case(
        lambda tmp_path, resnet: collect_activations(resnet, IMAGES, device="gpu", progress=False),
        ValueError,
        ("device 'gpu' is not a device torch knows", "'cuda:<index>'"),
    ),
    # indices
    "clear: a fractional Grad-FAM target": Case(
        lambda tmp_path, resnet: GradFAM(resnet, "layer4.1", random_sae(512)).attribute(IMAGES[:1], target=2.5),
        ValueError,
        ("target must be SAE feature indices (integers)", "2.5"),
    ),
    "clear: fractional features in an edit": Case(
        lambda tmp_path, resnet: edit_model(resnet, random_sae(512), [2.7, 1], 1.0),
        ValueError,
        ("SAE feature indices (integers)", "2.7"),
    ),
    "clear: a feature named twice in one edit": Case(
        lambda tmp_path, resnet: edit_model(resnet, random_sae(512), [3, 3], 1.0),
        ValueError,
        ("features repeat [3]",),
    ),
    # images the model cannot take
    "clear: grey images into an RGB model": Case(
        lambda tmp_path, resnet: collect_activations(resnet, IMAGES[:, :1], progress=False),
        ValueError,
        ("data have 1 channel but the model's first convolution (conv1) takes 3", "grey to RGB"),
    ),
    "clear: grey images into Grad-FAM": Case(
        lambda tmp_path, resnet: GradFAM(resnet, "layer4.1", random_sae(512)).attribute(IMAGES[:, :1], target=1),
        ValueError,
        ("inputs have 1 channel", "takes 3"),
    ),
    "clear: grey images into a class Grad-CAM": Case(
        lambda tmp_path, resnet: TokenGradCam(resnet, resnet.layer4[-1]).attribute(IMAGES[:, :1], target=0),
        ValueError,
        ("inputs have 1 channel", "takes 3"),
    ),
    "clear: images of another size into a fixed-size ViT": Case(
        lambda tmp_path, resnet: collect_activations(_VIT, torch.rand(2, 3, 40, 40), progress=False),
        ValueError,
        ("data are 40×40 but the model takes 32×32 images", "resize them"),
    ),
    "clear: a maximisation image size a fixed-size ViT cannot take": Case(
        lambda tmp_path, resnet: maximize_feature(_VIT, random_sae(32), 1, steps=1, image_size=40),
        ValueError,
        ("image_size must be the model's fixed input size (32, 32), got (40, 40)",),
    ),
    "clear: cue_reliance on uint8 images": Case(
        lambda tmp_path, resnet: cue_reliance(resnet, SAE_512, *[(IMAGES * 255).to(torch.uint8)] * 2),
        ValueError,
        ("with_cue must be floating-point images", "torch.uint8"),
    ),
    "clear: cue_reliance on images that are not pairs": Case(
        lambda tmp_path, resnet: cue_reliance(resnet, SAE_512, IMAGES, torch.cat([IMAGES, IMAGES])),
        ValueError,
        ("with_cue and without_cue must be the same images", "(2, 3, 32, 32) and (4, 3, 32, 32)"),
    ),
    "clear: a canvas cue colour in 0-255": Case(
        lambda tmp_path, resnet: CanvasConfig(cue_color=(255, 0, 0)),
        ValueError,
        ("CanvasConfig cue_color must be 3 numbers (R, G, B) in [0, 1]", "(255, 0, 0)"),
    ),
    "clear: a bar cue in a corner": Case(
        lambda tmp_path, resnet: CanvasConfig(cue_kind="bar", cue_position="top_left"),
        ValueError,
        ("CanvasConfig cue_position must be one of", "for cue_kind 'bar'", "'top_left'"),
    ),
    "clear: uint8 images, not normalised": Case(
        lambda tmp_path, resnet: collect_activations(resnet, (IMAGES * 255).to(torch.uint8), progress=False),
        ValueError,
        ("data must be floating-point images", "torch.uint8", "images.float() / 255"),
    ),
    "clear: one image without its batch dimension": Case(
        lambda tmp_path, resnet: FeatureCodes(resnet, random_sae(512))(IMAGES[0]),
        ValueError,
        ("inputs must be images of shape (N, C, H, W) with N >= 1, got (3, 32, 32)",),
    ),
    "clear: an empty batch of images": Case(
        lambda tmp_path, resnet: GradFAM(resnet, "layer4.1", random_sae(512)).attribute(IMAGES[:0], target=1),
        ValueError,
        ("inputs must be images of shape (N, C, H, W) with N >= 1, got (0, 3, 32, 32)",),
    ),
    # argument types: booleans are not numbers, strings are not numbers, numbers are not sites
    "clear: a boolean batch size": Case(
        lambda tmp_path, resnet: collect_activations(resnet, IMAGES, batch_size=True, progress=False),
        ValueError,
        ("batch_size must be an integer >= 1, got True",),
    ),
    "clear: a fractional batch size": Case(
        lambda tmp_path, resnet: collect_activations(resnet, IMAGES, batch_size=2.5, progress=False),
        ValueError,
        ("batch_size must be an integer >= 1, got 2.5",),
    ),
    "worked: a site given by its key": Case(
        lambda tmp_path, resnet: [
            collect_activations(resnet, IMAGES, site, progress=False).features
            for site in ("layer3:spatial_mean", Site("layer3", "spatial_mean"))
        ],
        None,
        check=lambda rows: torch.equal(*rows),
    ),
    "clear: a site that is neither a Site nor a key": Case(
        lambda tmp_path, resnet: collect_activations(resnet, IMAGES, 3, progress=False),
        TypeError,
        ("site must be a Site, a site key such as 'layer3:spatial_mean', or None, got 3",),
    ),
    "clear: a fractional seed": Case(
        lambda tmp_path, resnet: train_sae(torch.randn(20, 4), 8, epochs=1, seed=1.5, progress=False),
        ValueError,
        ("seed must be an integer, got 1.5",),
    ),
    "clear: a learning rate given as a string": Case(
        lambda tmp_path, resnet: train_sae(torch.randn(20, 4), 8, epochs=1, lr="1e-3", progress=False),
        ValueError,
        ("lr must be a finite number > 0, got '1e-3'",),
    ),
    "clear: an edit strength given as a string": Case(
        lambda tmp_path, resnet: edit_model(resnet, random_sae(512), 3, "5"),
        ValueError,
        ("alpha must be a number >= 0 or one per feature (1), got '5'",),
    ),
    "clear: a boolean edit strength": Case(
        lambda tmp_path, resnet: edit_model(resnet, random_sae(512), 3, True),
        ValueError,
        ("alpha must be a number >= 0 or one per feature (1), got True",),
    ),
    "clear: no feature named for an edit": Case(
        lambda tmp_path, resnet: edit_model(resnet, random_sae(512), None, 1.0),
        ValueError,
        ("feature must be SAE feature indices (integers), got None",),
    ),
    "worked: a NumPy integer as the Grad-FAM target": Case(
        lambda tmp_path, resnet: _both(GradFAM(resnet, "layer4.1", random_sae(512)).attribute, IMAGES, target=5),
        None,
        check=lambda maps: torch.equal(*maps),
    ),
    "clear: one Grad-FAM target per image, but too few": Case(
        lambda tmp_path, resnet: GradFAM(resnet, "layer4.1", random_sae(512)).attribute(IMAGES, target=[1, 2, 3]),
        ValueError,
        ("one per image (2), got 3: [1, 2, 3]",),
    ),
    "worked: an edit's weights computed from the whole model": Case(
        lambda tmp_path, resnet: [HeadEdit.of(SAE_512, 3, 2.0).weights(m) for m in (resnet, resnet.fc)],
        None,
        check=lambda pair: all(torch.equal(a, b) for a, b in zip(*pair, strict=True)),
    ),
    "clear: a rendering size that is not two integers": Case(
        lambda tmp_path, resnet: render_maps(torch.rand(2, 1, 4, 4), (8.7, 8.2)),
        ValueError,
        ("size (H, W) must be an integer >= 1, got 8.7",),
    ),
    # labels
    "worked: labels given as a list": Case(
        lambda tmp_path, resnet: ActivationSet(torch.randn(3, 4), [0, 2, 1]).labels,
        None,
        check=lambda labels: labels.dtype == torch.long and labels.tolist() == [0, 2, 1],
    ),
    "clear: fractional labels": Case(
        lambda tmp_path, resnet: ActivationSet(torch.randn(3, 4), torch.tensor([0.0, 1.5, 2.0])),
        ValueError,
        ("labels must be integer class indices, got torch.float32 values [0.0, 1.5, 2.0]",),
    ),
    "clear: negative labels": Case(
        lambda tmp_path, resnet: ActivationSet(torch.randn(3, 4), torch.tensor([0, -1, 1])),
        ValueError,
        ("labels must be class indices in [0, ...), got values from -1 to 1",),
    ),
    # SAE training, metrics and files
    "clear: training on one row repeated": Case(
        lambda tmp_path, resnet: train_sae(torch.ones(20, 4), 8, epochs=1, progress=False),
        ValueError,
        ("acts are 20 copies of one row",),
    ),
    "clear: training that diverges": Case(
        lambda tmp_path, resnet: train_sae(torch.randn(64, 4) * 1e30, 8, epochs=2, progress=False),
        ValueError,
        ("SAE training diverged in epoch 1", "lower lr"),
    ),
    "clear: metrics of a tensor instead of an ActivationSet": Case(
        lambda tmp_path, resnet: sae_metrics(random_sae(4, d_latent=8), torch.randn(5, 4)),
        TypeError,
        (
            "acts must be an ActivationSet or an ActivationStore, got Tensor",
            "wrap the rows in ActivationSet(features, labels)",
        ),
    ),
    "clear: metrics with labels the head does not have": Case(
        lambda tmp_path, resnet: sae_metrics(
            random_sae(4, d_latent=8), ActivationSet(torch.randn(5, 4), torch.arange(5)), head=nn.Linear(4, 3)
        ),
        ValueError,
        ("acts.labels must be class indices in [0, 2], got values from 0 to 4",),
    ),
    "clear: metrics of activations with NaN": Case(
        lambda tmp_path, resnet: sae_metrics(
            random_sae(4, d_latent=8), ActivationSet(torch.tensor([[0.0, 1, 2, 3], [float("nan"), 1, 2, 3]]))
        ),
        ValueError,
        ("acts holds 1 non-finite value", "(1, 0)"),
    ),
    "clear: metrics of a single row": Case(
        lambda tmp_path, resnet: sae_metrics(random_sae(4, d_latent=8), ActivationSet(torch.randn(1, 4))),
        ValueError,
        ("acts hold 1 rows; explained variance needs at least 2",),
    ),
    "clear: saving a non-finite SAE over a good one": Case(
        lambda tmp_path, resnet: _save_nan_sae_over_a_good_one(tmp_path),
        ValueError,
        ("the SAE's 'encoder.weight' holds 1 non-finite value", "it was not saved"),
    ),
    "clear: an SAE loaded onto a device torch does not know": Case(
        lambda tmp_path, resnet: SparseAutoencoder.load(random_sae(4, d_latent=8).save(tmp_path / "s"), device="gpu"),
        ValueError,
        ("device 'gpu' is not a device torch knows",),
    ),
    "clear: an activation file that is not one": Case(
        lambda tmp_path, resnet: _load_junk_activations(tmp_path),
        ValueError,
        ("acts.safetensors' is not a valid activation file",),
    ),
    "clear: α_crit of a sample with NaN activations": Case(
        lambda tmp_path, resnet: alpha_crit(
            resnet, random_sae(512), 3, ActivationSet(torch.full((2, 512), float("nan"))), 0
        ),
        ValueError,
        ("inputs' head-input activations holds 1024 non-finite values",),
    ),
    "clear: a dataset labelled with strings": Case(
        lambda tmp_path, resnet: collect_activations(resnet, _Items(lambda i: (IMAGES[0], "cat")), progress=False),
        ValueError,
        ("data's labels must be integer class indices, got ('cat', 'cat')",),
    ),
    "clear: a dataset of PIL images without a transform": Case(
        lambda tmp_path, resnet: collect_activations(resnet, _Items(lambda i: (PILImage.new("RGB", (8, 8)), 0))),
        TypeError,
        ("data's items cannot be stacked into a batch", "a transform that ends in a tensor"),
    ),
    "clear: NumPy activations into an SAE": Case(
        lambda tmp_path, resnet: random_sae(4, d_latent=8).encode(np.zeros((2, 4), dtype=np.float32)),
        ValueError,
        ("expected an activation tensor of shape (N, 4), got ndarray",),
    ),
    "clear: NumPy head inputs into an edit": Case(
        lambda tmp_path, resnet: HeadEdit.of(SAE_512, 3, 1.0)(np.zeros((2, 512))),
        ValueError,
        ("a must be an (N, 512) tensor of head inputs, got ndarray",),
    ),
    "clear: NumPy images into Grad-FAM": Case(
        lambda tmp_path, resnet: GradFAM(resnet, "layer4.1", SAE_512).attribute(IMAGES.numpy(), target=1),
        TypeError,
        ("inputs must be a tensor of images (N, C, H, W), got ndarray",),
    ),
    "clear: encoding in batches of 0": Case(
        lambda tmp_path, resnet: SAE_512.encode_all(torch.randn(3, 512), batch_size=0),
        ValueError,
        ("batch_size must be an integer >= 1, got 0",),
    ),
    "clear: a deletion score of one curve without its batch dimension": Case(
        lambda tmp_path, resnet: deletion_score(torch.tensor([2.0, 1.0, 0.0])),
        ValueError,
        ("curve must be (N, steps + 1) codes from deletion_curve, got (3,)",),
    ),
    "clear: a fractional maximisation image size": Case(
        lambda tmp_path, resnet: maximize_feature(resnet, SAE_512, 1, steps=1, image_size=16.5),
        ValueError,
        ("image_size (a side or (H, W)) must be an integer >= 8, got 16.5",),
    ),
    "clear: resuming from a file that is not a checkpoint": Case(
        lambda tmp_path, resnet: _resume_from_junk(tmp_path),
        ValueError,
        ("checkpoint.safetensors' is not a checkpoint written by train_sae", "delete it"),
    ),
    "clear: a control goal given as a string": Case(
        lambda tmp_path, resnet: ControlGoal(class_accuracy="0.1"),
        ValueError,
        ("ControlGoal class_accuracy must be a number in (0, 1], got '0.1'",),
    ),
    "worked: a checkpoint of 3 classes loaded without num_classes": Case(
        lambda tmp_path, resnet: _three_class_checkpoint_loaded(tmp_path),
        None,
        check=lambda model: model.fc.out_features == 3,
    ),
    "clear: control directions with no seed": Case(
        lambda tmp_path, resnet: control_directions(SAE_512, 3, ActivationSet(torch.randn(6, 512)), seed=None),
        ValueError,
        ("seed must be an integer, got None",),
    ),
    "clear: matching an SAE whose decoder holds NaN": Case(
        lambda tmp_path, resnet: match_features(SAE_512, _with_nan_decoder(SAE_512)),
        ValueError,
        ("other's decoder holds 1 non-finite value",),
    ),
    "clear: a gallery of NumPy images": Case(
        lambda tmp_path, resnet: plots.gallery(IMAGES.numpy()),
        ValueError,
        ("images must be an (N, 3, H, W) tensor with N >= 1, got ndarray",),
    ),
    "clear: activations saved over a folder": Case(
        lambda tmp_path, resnet: ActivationSet(torch.randn(3, 4)).save(tmp_path),
        IsADirectoryError,
        ("is a directory; a file is written there",),
    ),
    "clear: an SAE loaded from its weights file instead of its folder": Case(
        lambda tmp_path, resnet: SparseAutoencoder.load(random_sae(4, d_latent=8).save(tmp_path) / "model.safetensors"),
        ValueError,
        ("model.safetensors' is a file; pass the SAE's folder, which holds cfg.json and model.safetensors",),
    ),
    "clear: α_crit of a NumPy array": Case(
        lambda tmp_path, resnet: alpha_crit(resnet, SAE_512, 3, np.zeros((2, 512)), 0),
        TypeError,
        ("inputs must be images (a tensor, Dataset or DataLoader) or head-input activations", "got ndarray"),
    ),
    "worked: α_crit targets as a NumPy array": Case(
        lambda tmp_path, resnet: [
            alpha_crit(resnet, SAE_512, 3, ActivationSet(ACTS_512), t) for t in (np.array([0, 1, 2]), [0, 1, 2])
        ],
        None,
        check=lambda pair: torch.equal(*pair),
    ),
    "worked: an unsigned integer edit strength": Case(
        lambda tmp_path, resnet: [HeadEdit.of(SAE_512, 3, a).alpha for a in (np.uint8(2), 2.0)],
        None,
        check=lambda pair: torch.equal(*pair),
    ),
    "worked: settings given as NumPy numbers": Case(
        lambda tmp_path, resnet: json.loads(
            json.dumps(replace(TOY_CONFIG, seeds=np.int64(3), sweep_alphas=[0, np.float32(1.0)]).to_json())
        ),
        None,
        check=lambda stored: stored["seeds"] == 3 and stored["sweep_alphas"] == [0.0, 1.0],
    ),
    "worked: a learning rate given as a 0-d tensor": Case(
        lambda tmp_path, resnet: train_sae(torch.randn(20, 4), 8, epochs=1, lr=torch.tensor(1e-3), progress=False)[0],
        None,
        check=lambda sae: sae.metadata["training"]["lr"] == pytest.approx(1e-3),
    ),
    "worked: a headless checkpoint loaded with num_classes=0": Case(
        lambda tmp_path, resnet: _headless_checkpoint_loaded(tmp_path),
        None,
        check=lambda model: isinstance(model.fc, nn.Identity),
    ),
    "clear: an image file that is not there": Case(
        lambda tmp_path, resnet: load_rgb(tmp_path / "missing.png"),
        FileNotFoundError,
        ("missing.png",),
    ),
    # dtypes: cast, with the result the same as in the model's own dtype
    "worked: float32 images into a float16 model": Case(
        lambda tmp_path, resnet: _same_rows_as_float32(resnet, torch.float16),
        None,
        check=lambda rows: torch.allclose(*rows, rtol=1e-2, atol=1e-2),
    ),
    "worked: float64 images into a bfloat16 model": Case(
        lambda tmp_path, resnet: _same_rows_as_float32(resnet, torch.bfloat16, torch.float64),
        None,
        check=lambda rows: torch.allclose(*rows, rtol=5e-2, atol=5e-2),
    ),
    "worked: Grad-FAM on a bfloat16 model": Case(
        lambda tmp_path, resnet: _grad_fam_in_both_dtypes(resnet),
        None,
        check=lambda maps: (
            maps[0].shape == (2, 1, 2, 2) and torch.allclose(*maps, rtol=0.1, atol=0.1 * float(maps[1].abs().max()))
        ),
    ),
    "worked: a bfloat16 SAE on float32 activations": Case(
        lambda tmp_path, resnet: _codes_in_both_dtypes(random_sae(512), torch.randn(5, 512)),
        None,
        check=lambda codes: codes[0].dtype == torch.float32 and torch.allclose(*codes, rtol=5e-2, atol=5e-2),
    ),
    "worked: alpha_sweep on a bfloat16 model": Case(
        lambda tmp_path, resnet: _sweeps_agree(resnet), None, check=lambda agree: agree
    ),
    # figures of degenerate data
    "worked: α_crit boxplots where no sample ever crosses": Case(
        lambda tmp_path, resnet: _figure_text(plots.alpha_crit_boxplots({"c": _INF}, {"c": _INF}, {"c": math.inf})),
        None,
        check=lambda text: "not drawn: 6 infinite" in text and "no finite α_crit above 0 to draw" in text,
    ),
    "worked: α_crit boxplots with samples crossed at α = 0": Case(
        lambda tmp_path, resnet: _figure_text(
            plots.alpha_crit_boxplots({"c": torch.tensor([0.0, 2.0])}, {"c": torch.tensor([0.0, 3.0])})
        ),
        None,
        check=lambda text: "not drawn: 2 at 0 or below" in text,
    ),
    "worked: α_crit boxplots with -inf counted once": Case(
        lambda tmp_path, resnet: _figure_text(
            plots.alpha_crit_boxplots({"c": torch.tensor([-math.inf, 2.0])}, {"c": torch.tensor([1.0, 3.0])})
        ),
        None,
        check=lambda text: "not drawn: 1 infinite)" in text,
    ),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_error_from_any_entry_point(timm_resnet):
    with pytest.raises(ValueError, match="device cuda asked for CUDA, but torch sees no GPU here"):
        collect_activations(timm_resnet, torch.randn(2, 3, 32, 32), device="cuda", progress=False)
    assert all(t.device.type == "cpu" for t in timm_resnet.state_dict().values())


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_gives_a_clear_error_or_the_right_result_and_loses_nothing(name, tmp_path, timm_resnet):
    case = CASES[name]
    state = {key: t.clone() for key, t in timm_resnet.state_dict().items()}
    modes = [m.training for m in timm_resnet.modules()]
    if case.raises is None:
        assert case.check(case.call(tmp_path, timm_resnet))
    else:
        with pytest.raises(case.raises) as raised:
            case.call(tmp_path, timm_resnet)
        message = str(raised.value)
        missing = [p for p in case.phrases if p not in message]
        assert not missing, f"{message!r} lacks {missing}"
    after = timm_resnet.state_dict()
    assert all(after[key].device.type == "cpu" and torch.equal(t, after[key]) for key, t in state.items())
    assert [m.training for m in timm_resnet.modules()] == modes and hook_count(timm_resnet) == 0


def test_the_command_line_names_a_device_it_does_not_know_in_one_line(capsys, tmp_path):
    code = main(["demo", "--device", "gpu", "--out", str(tmp_path / "report")])
    assert_one_line_error(code, capsys.readouterr().err, "--device 'gpu' is not a device torch knows")
    assert not (tmp_path / "report").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--seeds", "1"], "--seeds must be an integer >= 2 (the seed study compares SAEs from two seeds or more)"),
        (["--sae-epochs", "0"], "--sae-epochs must be an integer >= 1, got 0"),
        (["--maximization-steps", "0"], "--maximization-steps must be an integer >= 1, got 0"),
        (["--faithfulness-images", "0"], "--faithfulness-images must be an integer >= 1, got 0"),
        (["--sae-latents", "3"], "--sae-latents must be an integer >= 8"),
    ],
)
def test_run_refuses_settings_that_cannot_work_before_it_reads_or_writes_anything(capsys, tmp_path, flags, phrase):
    out = tmp_path / "out"
    code = main(["run", "--model", "resnet18", "--data", str(tmp_path / "absent"), "--out", str(out), *flags])
    assert_one_line_error(code, capsys.readouterr().err, phrase)
    assert not out.exists()  # no config.json left to block the corrected run


class _Stop(Exception):
    pass


def _captured_inputs(monkeypatch, argv):
    """The PipelineInputs `run` builds from argv (the pipeline itself is not run)."""
    seen = []

    def stop(inputs, *args, **kwargs):
        seen.append(inputs)
        raise _Stop

    monkeypatch.setattr("captum_salve.cli.run_pipeline", stop)
    with pytest.raises(_Stop):
        main(argv)
    return seen[0]


def test_run_builds_the_same_random_model_on_every_rerun(monkeypatch, tmp_path):
    argv = ["run", "--model", "resnet18", "--data", str(image_tree(tmp_path / "data")), "--out", str(tmp_path / "o")]
    torch.manual_seed(1)
    first = _captured_inputs(monkeypatch, argv)
    torch.manual_seed(2)  # whatever the global generator holds
    second = _captured_inputs(monkeypatch, argv)
    pairs = zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert first.description["weights"] == "random (seed 0)"


def test_run_refuses_validation_folders_that_differ_from_the_training_ones(capsys, tmp_path):
    data, val = image_tree(tmp_path / "data", classes=3), image_tree(tmp_path / "val", classes=2)
    (val / "n01").rename(val / "n07")
    argv = ["run", "--model", "resnet18", "--data", str(data), "--val-data", str(val), "--out", str(tmp_path / "o")]
    code = main(argv)
    assert_one_line_error(code, capsys.readouterr().err, "['n00', 'n07']", "['n00', 'n01', 'n02']", "scored as another")


def test_a_second_model_in_the_same_out_keeps_the_first_models_report(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    monkeypatch.setattr(
        "captum_salve.cli.run_pipeline",
        lambda inputs, folder, *a, **k: hand_built_summary(folder, name=inputs.name),
    )
    data = str(image_tree(tmp_path / "data"))
    for model in ("resnet18", "resnet34", "resnet18"):  # the first model again: one section, replaced
        assert main(["run", "--model", model, "--data", data, "--out", str(out), "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert html.count('<h2 id="resnet18">') == 1 and html.count('<h2 id="resnet34">') == 1
    assert [s.name for s in read_summaries(out / "summary.json")] == ["resnet34", "resnet18"]
    (out / "summary.json").write_text("{not json")
    assert main(["run", "--model", "resnet18", "--data", data, "--out", str(out), "--quiet"]) == 0
    assert "could not be read" in capsys.readouterr().err
    assert [s.name for s in read_summaries(out / "summary.json")] == ["resnet18"]


def test_an_internal_failure_is_not_reported_as_the_users_mistake(monkeypatch, capsys, tmp_path):
    def library_failure(*args, **kwargs):
        json.loads("{")  # a ValueError raised inside a library, not by a check of ours

    monkeypatch.setattr("captum_salve.cli.run_pipeline", library_failure)
    argv = ["run", "--model", "resnet18", "--data", str(image_tree(tmp_path / "data")), "--out", str(tmp_path / "o")]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("captum-salve: internal error, not a mistake in your command: JSONDecodeError from ")
    assert "please report it" in err[0]


def test_run_refuses_a_head_larger_than_the_class_folders_before_any_work(capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--model", "resnet18", "--data", str(image_tree(tmp_path / "data")), "--out", str(out)]
    code = main([*argv, "--num-classes", "5"])
    phrase = "the model's head has 5 outputs but 3 class names were given (['n00', 'n01', 'n02'])"
    assert_one_line_error(code, capsys.readouterr().err, phrase)
    assert not (out / "resnet18" / "config.json").exists()


def _without_test_images_of(inputs, label):
    images, labels = inputs.test.tensors
    keep = labels != label
    return replace(inputs, test=TensorDataset(images[keep], labels[keep]), masks=None, planted_cue=None)


def _with_float_labels(inputs):
    images, labels = inputs.train.tensors
    return replace(inputs, train=TensorDataset(images, labels.float() + 0.5))


@pytest.mark.parametrize(
    ("broken", "phrase"),
    [
        (lambda i: _without_test_images_of(i, 2), "classes ['c2'] have no test images (1 of 3 classes)"),
        (_with_float_labels, "the train data must be labelled with integer class indices in [0, 2], got [0.5, 1.5"),
        (lambda i: replace(i, to_display=lambda x: None), "to_display must turn (N, C, H, W) model inputs into"),
    ],
    ids=["a class without test images", "fractional labels", "a display function that returns nothing"],
)
def test_data_that_cannot_be_measured_is_refused_before_anything_is_written(tmp_path, broken, phrase):
    with pytest.raises(ValueError, match=re.escape(phrase)):
        run_pipeline(broken(toy_inputs(3)), tmp_path / "run", TOY_CONFIG, progress=False)
    assert not any(p.is_file() for p in (tmp_path / "run").rglob("*") if p.name != ".lock")


class _RunsCode:
    """An object whose unpickling would call a function: what weights_only loading must refuse."""

    def __reduce__(self):
        return (print, ("this must never be printed",))


def test_a_checkpoint_holding_code_is_refused_unexecuted(capsys, tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"fc.weight": torch.zeros(2, 512), "payload": _RunsCode()}, path)
    with pytest.raises(ValueError, match="holds Python objects besides tensors.*it was not loaded"):
        create_model("resnet18", checkpoint_path=path, num_classes=2)
    assert "must never be printed" not in capsys.readouterr().out


def test_a_corrupt_image_in_the_data_is_named_in_one_line(capsys, tmp_path):
    data = image_tree(tmp_path / "data")
    broken = data / "n01" / "broken.JPEG"
    broken.write_bytes((data / "n01" / "0.JPEG").read_bytes()[:200])  # a truncated JPEG
    val = str(image_tree(tmp_path / "val"))
    argv = ["run", "--model", "resnet18", "--data", str(data), "--val-data", val, "--out", str(tmp_path / "o")]
    code = main([*argv, "--quiet", "--sae-latents", "8", "--sae-epochs", "1"])
    assert_one_line_error(code, capsys.readouterr().err, f"the image file {str(broken)!r} cannot be read", "fix or")


@pytest.mark.parametrize(
    ("change", "error", "phrase"),
    [
        (dict(goal={"class_accuracy": 0.1}), TypeError, "PipelineConfig goal must be a ControlGoal, got dict"),
        (dict(topk=4), ValueError, "PipelineConfig topk is only read by the TopK family, not sae_activation 'relu'"),
        (dict(sae_activation="topk", topk=True), ValueError, "PipelineConfig topk must be an integer in [1, 16]"),
        (dict(sweep_alphas=(False, True, 2.0)), ValueError, "sweep_alphas[0] must be a finite number >= 0, got False"),
        (dict(sweep_alphas=(2.0, 1.0)), ValueError, "sweep_alphas must be increasing, finite strengths >= 0"),
    ],
    ids=["a goal that is a dict", "topk for a ReLU SAE", "a boolean topk", "boolean strengths", "decreasing strengths"],
)
def test_settings_that_would_be_misread_are_refused(change, error, phrase):
    with pytest.raises(error, match=re.escape(phrase)):
        replace(TOY_CONFIG, **{"sae_activation": "relu", "sae_latents": 16, **change})


@pytest.mark.parametrize(
    ("change", "error", "phrase"),
    [
        (dict(masks=torch.zeros(2, 32, 32, dtype=torch.bool)), ValueError, "masks must be a boolean (N_test, H, W)"),
        (dict(planted_cue=torch.ones(24)), ValueError, "planted_cue must be a boolean (N_test,) tensor"),
        (dict(class_names="abc"), ValueError, "class_names must be a list of strings, one per class, got 'abc'"),
    ],
    ids=["masks for 2 of 24 test images", "a cue of floats", "class names as one string"],
)
def test_pipeline_inputs_that_do_not_fit_the_test_images_are_refused(change, error, phrase):
    with pytest.raises(error, match=re.escape(phrase)):
        replace(toy_inputs(3), **change)


def test_run_pipeline_refuses_settings_that_are_not_a_pipeline_config(tmp_path):
    with pytest.raises(TypeError, match=r"config must be a PipelineConfig \(e.g. .*\), got dict"):
        run_pipeline(toy_inputs(2), tmp_path / "run", {"seeds": 2}, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_summary_file_of_another_shape_is_named(tmp_path):
    (tmp_path / "summary.json").write_text("[]")
    with pytest.raises(ValueError, match="summary.json' is not a summary file: it holds a JSON list, not an object"):
        read_summaries(tmp_path / "summary.json")


def test_activations_of_an_image_with_nan_come_with_a_warning_naming_it(timm_resnet):
    images = IMAGES.clone()
    images[1, 0, 3, 3] = float("nan")
    with pytest.warns(UserWarning, match=r"1 of 2 activation rows hold NaN or Inf \(the first from image 1\)"):
        acts = collect_activations(timm_resnet, images, progress=False)
    with pytest.raises(ValueError, match=r"acts holds 512 non-finite values .* first at index \(1, 0\)"):
        train_sae(acts, 8, epochs=1, progress=False)  # and what would use them refuses them


class _NoFamily(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_a_model_without_a_known_grad_fam_layer_is_refused_before_any_work(tmp_path):
    inputs = replace(toy_inputs(3), model=_NoFamily(), cam_layers=())
    with pytest.raises(ValueError, match="no default Grad-FAM layer is known for _NoFamily"):
        run_pipeline(inputs, tmp_path / "run", TOY_CONFIG, progress=False)
    assert not any(p.is_file() for p in (tmp_path / "run").rglob("*") if p.name != ".lock")
    with pytest.raises(ValueError, match="has no module named 'layer9'"):
        run_pipeline(replace(inputs, cam_layers=("layer9",)), tmp_path / "run", TOY_CONFIG, progress=False)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["run", "--model", "resnet18"], "captum-salve run: error: the following arguments are required: --data"),
        (["run", "--model", "m", "--data", "d", "--seeds", "two"], "argument --seeds: invalid int value: 'two'"),
        ([], "captum-salve: error: the following arguments are required: command"),
    ],
    ids=["a missing flag", "a word for a number", "no command"],
)
def test_a_malformed_command_is_one_line_that_points_to_help(capsys, argv, phrase):
    with pytest.raises(SystemExit) as exit_status:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_status.value.code == 2 and len(lines) == 1
    assert phrase in lines[0] and lines[0].endswith("--help)")


def test_pipeline_inputs_without_test_images_are_refused():
    inputs = toy_inputs(2)
    empty = TensorDataset(inputs.test.tensors[0][:0], inputs.test.tensors[1][:0])
    with pytest.raises(ValueError, match="PipelineInputs train and test must hold images, got 32 and 0"):
        replace(inputs, test=empty, masks=None, planted_cue=None)


def test_pipeline_inputs_refuse_training_activations_that_are_not_of_their_images(tmp_path):
    inputs = toy_inputs(2)
    images, labels = inputs.train.tensors
    unlabelled = ActivationStore.from_set(ActivationSet(torch.randn(32, 4)), tmp_path / "unlabelled")
    short = ActivationStore.from_set(ActivationSet(torch.randn(31, 4), labels[:31]), tmp_path / "short")
    for store, phrase in [
        (unlabelled, "holds 32 rows read at 'head_input' without labels"),
        (short, "activations of the 32 training images, one row each"),
    ]:
        with pytest.raises(ValueError, match=re.escape(phrase)):
            replace(inputs, train_activations=store)
    with pytest.raises(TypeError, match="train_activations must be an ActivationStore, got ActivationSet"):
        replace(inputs, train_activations=ActivationSet(torch.randn(32, 4), labels))
