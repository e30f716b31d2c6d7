"""SAE variants: what each code activation computes, and a new variant as one class."""

from __future__ import annotations

from typing import get_args

import torch
from hypothesis import given, settings, strategies as st

from captum_salve import SparseAutoencoder, train_sae
from captum_salve.sae import VARIANTS, ActivationName, CodeActivation, code_activation
from tests.helpers import labelled_clusters


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    d_in=st.integers(1, 12),
    d_latent=st.integers(1, 20),
    activation=st.sampled_from(["linear", "relu", "topk"]),
    data=st.data(),
)
def test_codes_obey_their_activation(n, d_in, d_latent, activation, data):
    k = data.draw(st.integers(1, d_latent)) if activation == "topk" else None
    sae = SparseAutoencoder(d_in, d_latent, activation, k=k)
    a = torch.randn(n, d_in)
    a_hat, z = sae(a)
    assert a_hat.shape == (n, d_in) and z.shape == (n, d_latent)
    pre = sae.pre_activation(a)
    if activation == "linear":
        torch.testing.assert_close(z, pre)
    elif activation == "relu":
        torch.testing.assert_close(z, pre.clamp_min(0))
    else:
        assert ((z != 0).sum(dim=1) <= k).all() and (z >= 0).all()
        kept = pre.topk(k, dim=1).values.clamp_min(0).sum(dim=1)
        torch.testing.assert_close(z.sum(dim=1), kept)
    torch.testing.assert_close(sae.decoder_weight.norm(dim=0), torch.ones(d_latent))


class Shrink(CodeActivation):
    """A variant written for this test: soft thresholding at 0.5 (a JumpReLU cousin)."""

    name = "shrink"

    def __call__(self, pre):
        return torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0)


def test_a_new_variant_is_one_class_that_the_model_and_training_use():
    sae = SparseAutoencoder(6, 9, Shrink())
    a = torch.randn(5, 6)
    pre = sae.pre_activation(a)
    assert torch.equal(sae.encode(a), torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0))
    trained, history = train_sae(
        labelled_clusters(64, 6, 4, scale=3.0, spread=0.3, offset=5.0)[1],
        9,
        activation=Shrink(),
        epochs=2,
        progress=False,
    )
    assert (
        trained.activation == "shrink"
        and trained.code_activation.relative_active_threshold == 0.0
        and len(history) == 2
    )


def test_every_named_variant_is_registered_once():
    assert set(VARIANTS) == set(get_args(ActivationName))
    assert [code_activation(name, **VARIANTS[name].default_settings(64)).name for name in VARIANTS] == list(VARIANTS)
