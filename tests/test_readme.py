"""The README's examples run as they are printed."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.helpers import REPO


def python_blocks(markdown: str) -> list[str]:
    """The Python blocks of the section "The three stages in code".

    The pipeline's own block would run for half an hour; tests/pipeline makes the same calls on a toy model.
    """
    section = markdown.split("## The three stages in code", 1)[1].split("### The whole pipeline from Python", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_readme_examples_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) == 4  # discover, validate, Captum methods, control
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "accuracy_vs_alpha.png",
        "gallery.png",
        "maximization.png",
        "mu.png",
    ]
    assert namespace["maps"].shape == (8, 1, 4, 4) and namespace["four"].shape == (8, 4, 4, 4)
    heat = namespace["heat"]
    assert heat.shape == (8, 1, 64, 64) and heat.min() >= 0 and heat.max() <= 1
    torch.testing.assert_close(namespace["cam"], namespace["maps"], rtol=1e-4, atol=1e-5)
    gain = (
        namespace["codes"](namespace["images"])[:, namespace["feature"]]
        - namespace["codes"](namespace["images"] * 0)[:, namespace["feature"]]
    )
    torch.testing.assert_close(
        namespace["ig"].sum(dim=(1, 2, 3)), gain.detach(), rtol=0.05, atol=0.05 * float(gain.detach().abs().max())
    )
    edited_logits = torch.nn.functional.linear(namespace["acts"].features[:4], namespace["weight"], namespace["bias"])
    torch.testing.assert_close(namespace["steered"], edited_logits, rtol=1e-4, atol=1e-4)
    assert namespace["choice"].reached


def test_readme_store_example_runs_on_a_small_model(tmp_path, monkeypatch, timm_resnet):
    """The Python block of "Beyond memory", with a small model and dataset (and smaller SAEs) in its namespace."""
    section = (REPO / "README.md").read_text().split("### Beyond memory", 1)[1].split("## How the package maps", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    block = block.replace("SAEConfig(4096", "SAEConfig(64").replace("epochs=5", "epochs=1")
    images, labels = torch.rand(20, 3, 32, 32), torch.arange(20) % 4
    monkeypatch.chdir(tmp_path)
    import captum_salve

    namespace = {"salve": captum_salve, "model": timm_resnet, "train_dataset": TensorDataset(images, labels)}
    exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["store"]) == 20 and len(namespace["results"]) == 4
    assert torch.equal(namespace["profile"].counts, torch.full((4,), 5))


def test_readme_shortcut_example_runs_on_a_small_model(timm_resnet):
    """The Python blocks of "Suspected shortcuts", on 8 image pairs and 24 validation images each, in order.

    A random model and SAE are in their namespace.
    """
    section = (REPO / "README.md").read_text().split("### Suspected shortcuts", 1)[1].split("### Beyond memory", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2  # find the cue's features, then remove them
    block = "\n".join(blocks).replace(
        "with_cue.images, without_cue.images", "with_cue.images[:8], without_cue.images[:8]"
    )
    small = 'torch.utils.data.Subset(DigitsCanvas("train", seed=1001, cue=cue), range(24))'
    block = block.replace('DigitsCanvas("train", seed=1001, cue=cue)', small)
    import captum_salve
    from tests.helpers import random_sae

    sae = random_sae(512, "relu", d_latent=16, seed=0)
    profile = captum_salve.ClassProfile(torch.rand(4, 16), torch.full((4,), 5), torch.ones(16))
    namespace = {"salve": captum_salve, "model": timm_resnet, "sae": sae, "profile": profile, "torch": torch}
    exec(compile(block, "README.md", "exec"), namespace)
    reliance = namespace["reliance"]
    assert reliance.pairs == 8 and sorted(reliance.features.tolist()) == list(range(16))
    choice, unbiased = namespace["choice"], namespace["unbiased"]
    assert choice.features == tuple(reliance.top(8)) and len(namespace["clean"]) == 24
    edited_weight = choice.edit.weights(timm_resnet)[0].to(unbiased.fc.weight.dtype)
    assert unbiased is not timm_resnet and torch.equal(unbiased.fc.weight, edited_weight)
