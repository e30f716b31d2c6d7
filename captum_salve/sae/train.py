"""Training a :class:`SparseAutoencoder`: reproducible, resumable, with dead-latent resampling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from captum_salve.activations import ActivationSet
from captum_salve.checks import check_int, check_real
from captum_salve.files import atomic_path
from captum_salve.sae.metrics import ReconstructionStats
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sae.variants import ActivationName, CodeActivation, code_activation
from captum_salve.sites import as_device

__all__ = ["CHECKPOINT_FILE", "train_sae"]

CHECKPOINT_FILE = "checkpoint.safetensors"
_RESAMPLE_POOL = 4096
_RESAMPLE_ENCODER_SCALE = 0.2


def train_sae(
    acts: ActivationSet | Tensor,
    d_latent: int,
    *,
    activation: ActivationName | CodeActivation = "relu",
    k: int | None = None,
    l1: float | None = None,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> tuple[SparseAutoencoder, list[dict]]:
    r"""Train a sparse autoencoder on activations with the loss ``‖a − â‖² + λ‖z‖₁``.

    The loss is computed on a scale-free footing: the squared error is divided by
    the data's total variance ``s² = mean ‖a − ā‖²`` and the L1 term by ``s``, so one
    ``l1`` suits activations of any magnitude (it equals the paper's λ = ``l1 · s``
    up to the constant factor ``1/s²``). The decoder bias starts at the data mean,
    decoder columns start random and are renormalised to unit length after every
    step, and the encoder starts as the decoder's transpose. For variants that
    resample (ReLU, TopK), latents that never fired during an epoch are resampled
    at its end (except after the last epoch) towards inputs that are reconstructed worst.

    All randomness (initialisation, shuffling, resampling) comes from one generator
    seeded with ``seed``: the same seed on the same data gives bit-identical weights
    on the same device, and a run interrupted and resumed from its last checkpoint
    ends with the same weights as an uninterrupted one.

    Args:
        acts: Activations, an :class:`ActivationSet` (its site and model are
            recorded in the SAE) or an (N, M) tensor (the SAE's site is then the head input).
        d_latent: Number of SAE features.
        activation: ``"linear"``, ``"relu"``, ``"topk"`` or a
            :class:`~captum_salve.sae.variants.CodeActivation`.
        k: Features kept per input for ``"topk"``.
        l1: Sparsity strength on the scale-free loss; default the variant's ``default_l1``.
        epochs: Passes over the data.
        batch_size: Rows per optimiser step.
        lr: Adam learning rate.
        seed: Seed of the training generator.
        device: Where to train; default the activations' device.
        progress: Show a progress bar with loss, L0 and explained variance.
        checkpoint_dir: If given, the state after every epoch (weights, optimiser,
            generator, history) is written there atomically.
        resume: Continue from the checkpoint in ``checkpoint_dir``. The settings and
            the data must be the ones the checkpoint was written with.

    Returns:
        (sae, history): the trained SAE on ``device`` and one dict per epoch with
        ``loss``, ``mse``, ``explained_variance``, ``l0``, ``dead_fraction`` and ``resampled``.

    Example:
        >>> acts = torch.randn(1000, 64)
        >>> sae, history = train_sae(acts, 128, epochs=2, progress=False)
        >>> len(history)
        2
    """
    features = acts.features if isinstance(acts, ActivationSet) else acts
    if not isinstance(features, Tensor) or features.dim() != 2 or len(features) < 2:
        raise ValueError("acts must be an ActivationSet or an (N, M) tensor with N >= 2")
    check_finite(features, "acts", "; drop or fix those rows before training")
    if bool((features == features[0]).all()):
        raise ValueError(f"acts are {len(features)} copies of one row: there is no variation for an SAE to learn")
    variant = code_activation(activation, k=k)
    l1 = variant.default_l1 if l1 is None else l1
    epochs, batch_size = check_int(epochs, "epochs", 1), check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed")
    l1, lr = check_real(l1, "l1", 0.0), check_real(lr, "lr", 0.0, above=True)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the directory the checkpoints were written to")

    device = as_device(device) if device is not None else features.device
    data = features.to(device, torch.float32)
    generator = torch.Generator().manual_seed(seed)
    sae = _initial_sae(data, d_latent, variant, generator)
    if isinstance(acts, ActivationSet):
        sae.site, sae.model = acts.site, acts.model
    sae = sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    settings = {
        **sae.config(),
        "l1": l1,
        "lr": lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "seed": seed,
        "rows": len(data),
        "data_sum": float(features.double().sum()),
    }
    history: list[dict] = []
    if resume:
        history = _load_checkpoint(Path(checkpoint_dir), sae, optimizer, generator, settings)

    objective = _Objective(data, l1)
    n_batches = math.ceil(len(data) / batch_size)
    bar = tqdm(total=epochs * n_batches, initial=len(history) * n_batches, desc="SAE", disable=not progress)
    for epoch in range(len(history), epochs):
        order = torch.randperm(len(data), generator=generator).to(device)
        metrics, fired = _train_epoch(sae, optimizer, data, order, batch_size, objective, bar)
        resampled = (
            _resample_dead(sae, optimizer, data, fired, generator)
            if variant.resamples_dead and epoch < epochs - 1
            else 0
        )
        if not math.isfinite(metrics["loss"]):
            raise ValueError(
                f"SAE training diverged in epoch {epoch + 1} (loss {metrics['loss']}); lower lr (now {lr:g}) "
                "or rescale the activations"
            )
        history.append({"epoch": epoch + 1, **metrics, "resampled": resampled})
        if checkpoint_dir is not None:
            _save_checkpoint(Path(checkpoint_dir), sae, optimizer, generator, settings, history)
    bar.close()
    sae.metadata.update({"training": {key: value for key, value in settings.items() if key not in sae.config()}})
    return sae, history


class _Objective:
    """The scale-free loss: squared error over the data's total variance, L1 over its square root."""

    def __init__(self, data: Tensor, l1: float) -> None:
        self.mean = data.mean(dim=0)
        self.total_variance = (data - self.mean).pow(2).sum(dim=1).mean()
        self.scale = self.total_variance.sqrt()
        self.l1 = l1

    def __call__(self, a: Tensor, a_hat: Tensor, z: Tensor) -> Tensor:
        squared_error = (a - a_hat).pow(2).sum(dim=1)
        return squared_error.mean() / self.total_variance + self.l1 * z.abs().sum(dim=1).mean() / self.scale


def _train_epoch(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    data: Tensor,
    order: Tensor,
    batch_size: int,
    objective: _Objective,
    bar: tqdm,
) -> tuple[dict, Tensor]:
    """One pass over ``data`` in ``order``: the epoch's loss and metrics, and which latents fired."""
    stats = ReconstructionStats(objective.mean, sae.d_latent, sae.active_threshold)
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    for start in range(0, len(data), batch_size):
        a = data[order[start : start + batch_size]]
        a_hat, z = sae(a)
        loss = objective(a, a_hat, z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalize_decoder_()
        stats.update(a, a_hat.detach(), z.detach())
        loss_sum += loss.detach().double() * len(a)
        bar.update(1)
        if not bar.disable:
            summary = stats.summary()
            bar.set_postfix(
                loss=f"{float(loss_sum) / stats.rows:.4f}",
                L0=f"{summary['l0']:.1f}",
                EV=f"{summary['explained_variance']:.3f}",
                refresh=False,
            )
    return {"loss": float(loss_sum) / len(data), **stats.summary()}, stats.fired


def _initial_sae(data: Tensor, d_latent: int, variant: CodeActivation, generator: torch.Generator) -> SparseAutoencoder:
    sae = SparseAutoencoder(data.shape[1], d_latent, variant)
    with torch.no_grad():
        directions = torch.randn(data.shape[1], d_latent, generator=generator)
        sae.decoder.weight.copy_(directions / directions.norm(dim=0, keepdim=True))
        sae.decoder.bias.copy_(data.mean(dim=0).cpu())
        sae.encoder.weight.copy_(sae.decoder.weight.T)
        sae.encoder.bias.zero_()
    return sae


@torch.no_grad()
def _resample_dead(
    sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, data: Tensor, fired: Tensor, generator: torch.Generator
) -> int:
    dead = (~fired).nonzero().squeeze(1)
    if len(dead) == 0:
        return 0
    pool = data[torch.randperm(len(data), generator=generator)[:_RESAMPLE_POOL].to(data.device)]
    a_hat, _ = sae(pool)
    residual = pool - a_hat
    weights = residual.pow(2).sum(dim=1).double().cpu().square() + 1e-12
    chosen = torch.multinomial(weights, len(dead), replacement=len(dead) > len(pool), generator=generator)
    directions = residual[chosen.to(data.device)]
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive_norm = sae.encoder.weight[fired].norm(dim=1).mean() if fired.any() else torch.tensor(1.0)
    sae.decoder.weight[:, dead] = directions.T
    sae.encoder.weight[dead] = directions * alive_norm * _RESAMPLE_ENCODER_SCALE
    sae.encoder.bias[dead] = 0.0
    # Adam's running moments belong to the old latents: restart them.
    for param, index_dim in ((sae.decoder.weight, 1), (sae.encoder.weight, 0), (sae.encoder.bias, 0)):
        for moment in ("exp_avg", "exp_avg_sq"):
            state = optimizer.state.get(param, {})
            if moment in state:
                state[moment].index_fill_(index_dim, dead, 0.0)
    return len(dead)


def _save_checkpoint(
    directory: Path,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    settings: dict,
    history: list[dict],
) -> None:
    tensors = {f"sae.{name}": t.detach().cpu().contiguous() for name, t in sae.state_dict().items()}
    optim_state = optimizer.state_dict()
    for index, state in optim_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()
    meta = {"settings": settings, "history": history, "param_groups": optim_state["param_groups"]}
    with atomic_path(directory / CHECKPOINT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta)})


def _load_checkpoint(
    directory: Path,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    settings: dict,
) -> list[dict]:
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"resume=True but there is no checkpoint at {str(path)!r}; "
            "run once with checkpoint_dir set (and resume=False) to start one"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["checkpoint"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a checkpoint written by train_sae ({error!r}); delete it") from None
    differences = {
        key: (meta["settings"].get(key), value) for key, value in settings.items() if meta["settings"].get(key) != value
    }
    if differences:
        listed = ", ".join(f"{key}: checkpoint {old!r} vs now {new!r}" for key, (old, new) in differences.items())
        raise ValueError(f"the checkpoint in {str(directory)!r} was written with other settings or data ({listed})")
    tensors = load_file(str(path))
    sae.load_state_dict({name[4:]: t for name, t in tensors.items() if name.startswith("sae.")})
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["generator"])
    return meta["history"]
