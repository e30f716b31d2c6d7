"""collect_activations and ActivationSet: the head input of every family, labels, bad data, files."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from captum_salve import ActivationSet, collect_activations


def test_timm_head_input_equals_forward_head_pre_logits(timm_resnet, timm_vit):
    for model, size in ((timm_resnet, 64), (timm_vit, 32)):
        images = torch.rand(6, 3, size, size)
        acts = collect_activations(model, images, batch_size=4, progress=False)
        with torch.no_grad():
            expected = model.forward_head(model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(acts.features, expected)
        assert acts.labels is None and acts.site == "head_input"


def test_torchvision_vit_head_input_is_the_normed_class_token(torchvision_vit):
    images = torch.rand(3, 3, 32, 32)
    acts = collect_activations(torchvision_vit, images, progress=False)
    with torch.no_grad():
        tokens = torchvision_vit._process_input(images)
        tokens = torch.cat([torchvision_vit.class_token.expand(3, -1, -1), tokens], dim=1)
        expected = torchvision_vit.encoder(tokens)[:, 0]
    torch.testing.assert_close(acts.features, expected)


def test_labels_come_from_dataset_and_loader(timm_resnet):
    images, labels = torch.rand(10, 3, 32, 32), torch.arange(10) % 3
    from_dataset = collect_activations(timm_resnet, TensorDataset(images, labels), batch_size=4, progress=False)
    from_loader = collect_activations(
        timm_resnet, DataLoader(TensorDataset(images, labels), batch_size=3), progress=False
    )
    assert torch.equal(from_dataset.labels, labels) and torch.equal(from_loader.labels, labels)
    torch.testing.assert_close(from_dataset.features, from_loader.features)


def test_bad_data_is_refused(timm_resnet):
    with pytest.raises(ValueError, match=r"images of shape \(N, C, H, W\)"):
        collect_activations(timm_resnet, torch.rand(3, 32, 32), progress=False)
    with pytest.raises(TypeError, match="data must be an image tensor, a Dataset or a DataLoader"):
        collect_activations(timm_resnet, [torch.rand(3, 32, 32)], progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        collect_activations(timm_resnet, torch.rand(0, 3, 32, 32), progress=False)


def test_activation_set_round_trip(tmp_path):
    acts = ActivationSet(torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]), "layer3")
    acts.save(tmp_path / "acts.safetensors")
    loaded = ActivationSet.load(tmp_path / "acts.safetensors")
    assert torch.equal(loaded.features, acts.features) and torch.equal(loaded.labels, acts.labels)
    assert loaded.site == "layer3"
    assert [p.name for p in tmp_path.iterdir()] == ["acts.safetensors"]  # no partial file left
