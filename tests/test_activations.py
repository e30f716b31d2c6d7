"""Activation capture: sites, reducers, hooks and their clean-up."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_salve import ActivationSet, Site, collect_activations
from captum_salve.models import create_model, default_cam_layer, find_head, token_layout
from captum_salve.sites import recording
from tests.helpers import hook_count


@pytest.mark.parametrize(
    "fixture, head_name",
    [("timm_resnet", "fc"), ("timm_vit", "head"), ("torchvision_resnet", "fc"), ("torchvision_vit", "heads.head")],
)
def test_head_is_found_for_every_family(fixture, head_name, request):
    model = request.getfixturevalue(fixture)
    name, head = find_head(model)
    assert name == head_name and isinstance(head, nn.Linear)


def test_head_of_the_papers_full_size_models():
    assert find_head(timm.create_model("vit_base_patch16_224"))[1].in_features == 768
    assert find_head(torchvision.models.vit_b_16())[1].in_features == 768
    assert find_head(torchvision.models.resnet18())[1].in_features == 512


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


def test_named_module_with_spatial_mean(timm_resnet):
    images = torch.rand(2, 3, 64, 64)
    acts = collect_activations(timm_resnet, images, Site("layer3", reducer="spatial_mean"), progress=False)
    with torch.no_grad():
        x = timm_resnet.layer3(
            timm_resnet.layer2(
                timm_resnet.layer1(timm_resnet.maxpool(timm_resnet.act1(timm_resnet.bn1(timm_resnet.conv1(images)))))
            )
        )
    torch.testing.assert_close(acts.features, x.mean(dim=(2, 3)))
    assert acts.site == "layer3:spatial_mean" and Site.from_key(acts.site) == Site("layer3", "spatial_mean")


def test_module_given_as_object_with_flatten(timm_resnet):
    acts = collect_activations(
        timm_resnet, torch.rand(2, 3, 64, 64), Site(timm_resnet.layer4, "flatten"), progress=False
    )
    assert acts.features.shape == (2, 512 * 2 * 2)


def test_token_reducers(timm_vit):
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = timm_vit.blocks[0](timm_vit.norm_pre(timm_vit._pos_embed(timm_vit.patch_embed(images))))
    cls = collect_activations(timm_vit, images, Site("blocks.0", "cls"), progress=False)
    mean = collect_activations(timm_vit, images, Site("blocks.0", "mean_tokens"), progress=False)
    custom = collect_activations(timm_vit, images, Site("blocks.0", lambda t: t[:, -1]), progress=False)
    torch.testing.assert_close(cls.features, tokens[:, 0])
    torch.testing.assert_close(mean.features, tokens[:, 1:].mean(dim=1))  # prefix token excluded
    torch.testing.assert_close(custom.features, tokens[:, -1])


def test_rows_are_copies_not_aliases_of_in_place_buffers():
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.ReLU(inplace=True), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(-torch.eye(4))
        model[0].bias.zero_()
    acts = collect_activations(model, TensorDataset(torch.ones(3, 4)), Site("1"), progress=False)
    assert torch.all(acts.features == -1.0)  # the in-place ReLU after the site did not zero them


def test_hooks_are_removed_when_the_forward_raises(timm_resnet):
    with pytest.raises(RuntimeError):
        collect_activations(timm_resnet, torch.rand(2, 5, 32, 32), progress=False)  # 5 channels: conv1 fails
    assert hook_count(timm_resnet) == 0
    with pytest.raises(ZeroDivisionError), recording(timm_resnet):
        raise ZeroDivisionError("raised inside the block")
    assert hook_count(timm_resnet) == 0


def test_train_mode_is_restored(timm_resnet):
    timm_resnet.train()
    timm_resnet.layer1.eval()
    collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), progress=False)
    assert timm_resnet.training and not timm_resnet.layer1.training and timm_resnet.layer2.training


def test_model_without_linear_head_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no linear classifier head found on Sequential"):
        collect_activations(model, torch.rand(1, 3, 8, 8), progress=False)
    headless = timm.create_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="its classifier is Identity"):
        find_head(headless)


def test_missing_module_name_lists_close_names(timm_resnet):
    with pytest.raises(ValueError, match=r"no module named 'layer5'.*closest names: layer"):
        collect_activations(timm_resnet, torch.rand(1, 3, 32, 32), Site("layer5"), progress=False)


def test_reducer_that_does_not_fit_the_output(timm_resnet, timm_vit):
    with pytest.raises(ValueError, match=r"reducer 'cls' expects an \(N, tokens, C\) output.*spatial_mean"):
        collect_activations(timm_resnet, torch.rand(1, 3, 32, 32), Site("layer3", "cls"), progress=False)
    with pytest.raises(ValueError, match=r"reducer 'none' expects an \(N, M\) output.*'cls' or 'mean_tokens'"):
        collect_activations(timm_vit, torch.rand(1, 3, 32, 32), Site("blocks.0"), progress=False)
    with pytest.raises(ValueError, match="reducer must be one of"):
        Site("layer3", "max")


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


def test_default_cam_layers_and_token_layouts(timm_resnet, timm_vit, torchvision_resnet, torchvision_vit):
    assert default_cam_layer(timm_resnet) is timm_resnet.layer4[-1]
    assert default_cam_layer(torchvision_resnet) is torchvision_resnet.layer4[-1]
    assert default_cam_layer(timm_vit) is timm_vit.blocks[-1].norm1
    assert default_cam_layer(torchvision_vit) is torchvision_vit.encoder.layers[-1].ln_1
    assert token_layout(timm_vit).grid == (4, 4) and token_layout(timm_vit).prefix_tokens == 1
    assert token_layout(torchvision_vit).grid == (4, 4)
    assert token_layout(timm_resnet) is None


def test_create_model_errors(tmp_path):
    with pytest.raises(ValueError, match="timm does not know the model 'resnet_nope'"):
        create_model("resnet_nope")
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'"):
        create_model("torchvision/resnet19")
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit ResNet"):
        create_model("resnet18", checkpoint_path=wrong, num_classes=5)
    model = create_model("resnet18", checkpoint_path=wrong, num_classes=3)
    assert model.fc.out_features == 3
    assert isinstance(create_model("torchvision/vit_b_16", num_classes=7).heads.head, nn.Linear)


def test_site_keys_name_the_reducer_and_rebuild_the_site(timm_resnet):
    def pooled_max(output):
        return output.amax(dim=(2, 3))

    builtin = collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), Site("layer2", "spatial_mean"), progress=False)
    custom = collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), Site("layer2", pooled_max), progress=False)
    assert (builtin.site, custom.site) == ("layer2:spatial_mean", "layer2:<pooled_max>")
    assert Site.from_key(builtin.site) == Site("layer2", "spatial_mean") and Site.from_key("head_input") == Site()
    with pytest.raises(ValueError, match="custom reducer"):
        Site.from_key(custom.site)
