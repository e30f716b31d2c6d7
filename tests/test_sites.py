"""Sites: module outputs and their reducers, site keys, and hooks that leave the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_salve import Site, collect_activations
from captum_salve.sites import recording
from tests.helpers import hook_count


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
    failing = timm_resnet.layer4.register_forward_pre_hook(lambda module, args: 1 / 0)  # inside the forward
    try:
        with pytest.raises(ZeroDivisionError):
            collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), progress=False)
    finally:
        failing.remove()
    assert hook_count(timm_resnet) == 0
    with pytest.raises(ZeroDivisionError), recording(timm_resnet):
        raise ZeroDivisionError("raised inside the block")
    assert hook_count(timm_resnet) == 0


def test_train_mode_is_restored(timm_resnet):
    timm_resnet.train()
    timm_resnet.layer1.eval()
    collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), progress=False)
    assert timm_resnet.training and not timm_resnet.layer1.training and timm_resnet.layer2.training


def test_reducer_that_does_not_fit_the_output(timm_resnet, timm_vit):
    with pytest.raises(ValueError, match=r"reducer 'cls' expects an \(N, tokens, C\) output.*spatial_mean"):
        collect_activations(timm_resnet, torch.rand(1, 3, 32, 32), Site("layer3", "cls"), progress=False)
    with pytest.raises(ValueError, match=r"reducer 'none' expects an \(N, M\) output.*'cls' or 'mean_tokens'"):
        collect_activations(timm_vit, torch.rand(1, 3, 32, 32), Site("blocks.0"), progress=False)
    with pytest.raises(ValueError, match="reducer must be one of"):
        Site("layer3", "max")


def test_site_keys_name_the_reducer_and_rebuild_the_site(timm_resnet):
    def pooled_max(output):
        return output.amax(dim=(2, 3))

    builtin = collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), Site("layer2", "spatial_mean"), progress=False)
    custom = collect_activations(timm_resnet, torch.rand(2, 3, 32, 32), Site("layer2", pooled_max), progress=False)
    assert (builtin.site, custom.site) == ("layer2:spatial_mean", "layer2:<pooled_max>")
    assert Site.from_key(builtin.site) == Site("layer2", "spatial_mean") and Site.from_key("head_input") == Site()
    with pytest.raises(ValueError, match="custom reducer"):
        Site.from_key(custom.site)
