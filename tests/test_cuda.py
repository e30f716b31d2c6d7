"""On a GPU, every stage gives what it gives on the CPU (skipped where torch sees no CUDA device)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from captum_salve import (
    ActivationSet,
    ActivationStore,
    FeatureCodes,
    GradFAM,
    HeadEdit,
    SparseAutoencoder,
    alpha_crit,
    alpha_sweep,
    collect_activations,
    train_sae,
)
from captum_salve.attr import render_maps
from captum_salve.sae import VARIANTS, code_activation
from tests.helpers import random_sae

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _full_float32():
    """TF32 (on by default for cuDNN convolutions) rounds to 10 mantissa bits; compare at float32 precision."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _pair(seed: int = 0):
    """The same random ResNet-18 and linear SAE, once on the CPU and once on the GPU."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=5).eval()
    sae = random_sae(512, d_latent=64)
    gpu_model, gpu_sae = timm.create_model("resnet18", num_classes=5).eval(), SparseAutoencoder(512, 64, "linear")
    gpu_model.load_state_dict(model.state_dict())
    gpu_sae.load_state_dict(sae.state_dict())
    return (model, sae), (gpu_model.to(CUDA), gpu_sae.to(CUDA))


def test_codes_and_grad_fam_maps_agree_with_the_cpu():
    (model, sae), (gpu_model, gpu_sae) = _pair()
    images = torch.rand(4, 3, 64, 64)
    torch.testing.assert_close(
        FeatureCodes(gpu_model, gpu_sae)(images.to(CUDA)).cpu(), FeatureCodes(model, sae)(images), rtol=1e-3, atol=1e-3
    )
    cpu_maps = GradFAM(model, "layer3.1", sae).attribute_features(images, [1, 7, 9])
    gpu_maps = GradFAM(gpu_model, "layer3.1", gpu_sae).attribute_features(images.to(CUDA), [1, 7, 9])
    torch.testing.assert_close(gpu_maps.cpu(), cpu_maps, rtol=1e-3, atol=1e-3 * float(cpu_maps.abs().max()))
    rendered = render_maps(gpu_maps[:, :1], (64, 64))
    assert rendered.device.type == "cuda" and 0 <= rendered.min() and rendered.max() <= 1


def test_edits_sweeps_and_alpha_crit_agree_with_the_cpu():
    (model, sae), (gpu_model, gpu_sae) = _pair(1)
    acts = ActivationSet(torch.rand(200, 512) * 2, torch.arange(200) % 5)
    for rule in ("salve", "project"):
        cpu_weight, cpu_bias = HeadEdit.of(sae, [3, 8], 4.0, rule=rule).weights(model.fc)
        gpu_weight, gpu_bias = HeadEdit.of(gpu_sae, [3, 8], 4.0, rule=rule).weights(gpu_model.fc)
        torch.testing.assert_close(gpu_weight.cpu(), cpu_weight, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gpu_bias.cpu(), cpu_bias, rtol=1e-6, atol=1e-6)
        cpu_sweep = alpha_sweep(model, sae, 3, acts, [0, 1, 5, 20], rule=rule)
        gpu_sweep = alpha_sweep(gpu_model, gpu_sae, 3, acts, [0, 1, 5, 20], rule=rule)
        assert (
            gpu_sweep.confusion - cpu_sweep.confusion
        ).abs().sum() <= 2  # float64 on both; a tie may fall either way
        exact = alpha_crit(gpu_model, gpu_sae, 3, acts, 2, rule=rule)
        bisect = alpha_crit(gpu_model, gpu_sae, 3, acts, 2, rule=rule, method="bisect")
        assert torch.equal(exact.isfinite(), bisect.isfinite())
        torch.testing.assert_close(exact[exact.isfinite()], bisect[bisect.isfinite()], rtol=1e-6, atol=1e-9)


def test_sae_training_on_the_gpu_is_reproducible():
    acts = torch.randn(512, 32) + 3
    first, history = train_sae(acts, 48, epochs=3, device=CUDA, progress=False, seed=4)
    second, _ = train_sae(acts, 48, epochs=3, device=CUDA, progress=False, seed=4)
    assert first.decoder_weight.device.type == "cuda"
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert history[-1]["explained_variance"] > history[0]["explained_variance"]


@pytest.mark.parametrize("activation", VARIANTS)
def test_every_variant_trains_reproducibly_on_the_gpu_and_encodes_there_as_on_the_cpu(activation):
    acts = torch.randn(512, 32) + 3
    variant = code_activation(activation, **VARIANTS[activation].default_settings(48))
    runs = [train_sae(acts, 48, activation=variant, epochs=3, device=CUDA, progress=False, seed=4) for _ in range(2)]
    (first, history), (second, _) = runs
    for name, tensor in first.state_dict().items():
        assert tensor.device.type == "cuda" and torch.equal(tensor, second.state_dict()[name]), name
    assert history[-1]["explained_variance"] > history[0]["explained_variance"]
    on_cpu = copy.deepcopy(first).cpu()
    torch.testing.assert_close(first.encode(acts.to(CUDA)).cpu(), on_cpu.encode(acts), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_on_the_gpu_takes_float32_images_from_the_cpu(dtype):
    (model, sae), (gpu_model, gpu_sae) = _pair(2)
    images = torch.rand(4, 3, 64, 64)  # float32, on the CPU: cast and moved to the model's dtype and device
    low = gpu_model.to(dtype)
    rounded = timm.create_model("resnet18", num_classes=5).eval()
    rounded.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    got = collect_activations(low, images, progress=False).features
    want = collect_activations(rounded, images.to(dtype).float(), progress=False).features
    torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))
    maps = GradFAM(low, "layer3.1", gpu_sae.to(dtype)).attribute_features(images, [1, 7])
    assert maps.device.type == "cuda" and maps.dtype == dtype and bool(maps.isfinite().all())


def test_training_from_a_store_on_the_gpu_equals_training_from_gpu_memory(tmp_path):
    acts = ActivationSet(torch.randn(700, 24) + 3.0, torch.arange(700) % 5)
    store = ActivationStore.from_set(acts, tmp_path / "store", shard_rows=123)
    on_gpu = ActivationSet(acts.features.to(CUDA), acts.labels)
    for shuffle in ("exact", "blocks"):
        settings = dict(activation="topk", k=4, epochs=2, batch_size=64, shuffle=shuffle, block_rows=50)
        from_memory, _ = train_sae(on_gpu, 32, progress=False, **settings)
        from_store, _ = train_sae(store, 32, device=CUDA, progress=False, **settings)
        assert from_store.decoder_weight.device.type == from_memory.decoder_weight.device.type == "cuda"
        for name, tensor in from_memory.state_dict().items():
            assert torch.equal(tensor, from_store.state_dict()[name]), (shuffle, name)
