"""Training sparse autoencoders: reproducible, resumable, several per pass over the data, data-parallel.

:func:`train_saes` trains any number of SAEs in one pass over the rows (each batch is
read once and given to every SAE); :func:`train_sae` is the one-SAE case. The rows come
from memory or from an :class:`~captum_salve.store.ActivationStore` on disk, and the
same rows in the same order give bit-identical weights from either. Under
``torchrun`` every global batch is split across the ranks and the gradients are
averaged by :class:`~torch.nn.parallel.DistributedDataParallel`.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.torch_version import TorchVersion
from tqdm.auto import tqdm

from captum_salve.activations import ActivationSet
from captum_salve.checks import check_int, check_real
from captum_salve.distributed import ProcessGroup
from captum_salve.files import atomic_path
from captum_salve.sae.metrics import ReconstructionStats
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sae.variants import ActivationName, CodeActivation, TrainingBatch, code_activation
from captum_salve.sites import as_device
from captum_salve.store import Rows, RowStatistics, as_rows

__all__ = ["CHECKPOINT_FILE", "SAEConfig", "Shuffle", "checkpoint_folder", "train_sae", "train_saes"]

CHECKPOINT_FILE = "checkpoint.safetensors"
Shuffle = Literal["exact", "blocks"]
# Resampling reads at most this many rows, and at most this share of an epoch's, so it costs at most
# an eighth of an epoch's forward passes however small the data.
_RESAMPLE_POOL = 4096
_RESAMPLE_POOL_SHARE = 1 / 8
_DEAD_AFTER_ROWS = 10_000_000


@dataclass(frozen=True)
class SAEConfig:
    """One SAE of a :func:`train_saes` call: its shape, variant, loss and seed.

    Example:
        >>> configs = [SAEConfig(128, "relu", seed=s) for s in range(4)] + [SAEConfig(128, "topk", k=8)]
    """

    d_latent: int
    """Number of SAE features."""
    activation: ActivationName | CodeActivation = "relu"
    """A name of :data:`~captum_salve.sae.VARIANTS` or a :class:`~captum_salve.sae.variants.CodeActivation`."""
    k: int | None = None
    """Features kept per input for the TopK family."""
    l1: float | None = None
    """Sparsity strength on the scale-free loss (an L0 weight for ``"jumprelu"``); default the variant's."""
    lr: float = 1e-3
    """Adam learning rate."""
    seed: int = 0
    """Seed of the SAE's own generator (initialisation and resampling)."""

    def checked(self) -> tuple[CodeActivation, float, float, int]:
        """(variant, l1, lr, seed) after checking each, or a ValueError naming the field."""
        check_int(self.d_latent, "d_latent", 1)
        variant = code_activation(self.activation, k=self.k)
        l1 = variant.default_l1 if self.l1 is None else self.l1
        return (
            variant,
            check_real(l1, "l1", 0.0),
            check_real(self.lr, "lr", 0.0, above=True),
            check_int(self.seed, "seed"),
        )


def train_sae(
    acts: ActivationSet | Tensor | Rows,
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
    shuffle: Shuffle = "exact",
    shuffle_seed: int | None = None,
    block_rows: int = 4096,
    buffer_blocks: int = 64,
    micro_batches: int = 1,
    checkpoint_every: int | None = None,
) -> tuple[SparseAutoencoder, list[dict]]:
    r"""Train a sparse autoencoder on activations with its variant's loss, ``‖a − â‖² + λ‖z‖₁`` for ReLU.

    The loss is computed on a scale-free footing: the squared error is divided by
    the data's total variance ``s² = mean ‖a − ā‖²`` and the L1 term by ``s``, so one
    ``l1`` suits activations of any magnitude (it equals the paper's λ = ``l1 · s``
    up to the constant factor ``1/s²``). Each variant adds or changes terms
    (:meth:`~captum_salve.sae.variants.CodeActivation.loss`): a JumpReLU's ``l1``
    weighs an L0 count, a TopK SAE adds the AuxK loss, a Matryoshka SAE averages the
    errors of its nested prefixes (the history's MSE and EV are still the whole
    dictionary's). The decoder bias starts at
    the data mean, decoder columns start random and are renormalised to unit length
    after every step, and the encoder starts as the decoder's transpose (an archetypal
    SAE starts and constrains its atoms its own way, from a seeded sample of the rows:
    :meth:`~captum_salve.sae.variants.CodeActivation.prepare`). For variants
    that resample (ReLU; TopK with ``resample``), latents that never fired during an
    epoch are resampled at its end (except after the last epoch) towards inputs that
    are reconstructed worst.

    Randomness is seeded: ``seed`` drives initialisation and resampling, and the data
    order of every epoch is a function of ``(shuffle_seed, epoch)`` alone (default
    ``shuffle_seed = seed``). The same settings on the same rows give bit-identical
    weights on the same device, whether the rows are in memory or in a store, and a
    run interrupted and resumed from its last checkpoint ends with the same weights
    as an uninterrupted one.

    Args:
        acts: Activations: an :class:`ActivationSet` (its site and model are
            recorded in the SAE), an :class:`~captum_salve.store.ActivationStore`,
            or an (N, M) tensor (the SAE's site is then the head input).
        d_latent: Number of SAE features.
        activation: A name of :data:`~captum_salve.sae.VARIANTS` (``"linear"``, ``"relu"``,
            ``"topk"``, ``"batchtopk"``, ``"jumprelu"``, ``"matryoshka"``, ``"archetypal"``) or a
            :class:`~captum_salve.sae.variants.CodeActivation` (``Archetypal(16, delta=0.05)``
            for settings beyond ``k``).
        k: Features kept per input for the TopK family.
        l1: Sparsity strength on the scale-free loss (an L0 weight for ``"jumprelu"``);
            default the variant's ``default_l1``.
        epochs: Passes over the data.
        batch_size: Rows per optimiser step (the global batch under ``torchrun``).
        lr: Adam learning rate.
        seed: Seed of the SAE's generator.
        device: Where to train; default the activations' device (a store's: the CPU).
        progress: Show a progress bar with loss, L0 and explained variance.
        checkpoint_dir: If given, the training state (weights, optimiser, generator,
            history, and the position within an epoch) is written there atomically
            after every epoch, and every ``checkpoint_every`` steps.
        resume: Continue from the checkpoint in ``checkpoint_dir``. The settings and
            the data must be the ones the checkpoint was written with.
        shuffle: ``"exact"`` or ``"blocks"`` (see :func:`train_saes`).
        shuffle_seed: Seed of the data order; default ``seed``.
        block_rows: Rows per block for ``"blocks"``.
        buffer_blocks: Blocks per shuffle buffer for ``"blocks"``.
        micro_batches: Parts of each batch whose gradients are accumulated.
        checkpoint_every: Also checkpoint every this many steps within an epoch.

    Returns:
        (sae, history): the trained SAE on ``device`` and one dict per epoch with
        ``loss``, ``mse``, ``explained_variance``, ``l0``, ``dead_fraction`` and ``resampled``.

    Example:
        >>> acts = torch.randn(1000, 64)
        >>> sae, history = train_sae(acts, 128, epochs=2, progress=False)
        >>> len(history)
        2
    """
    [result] = train_saes(
        acts,
        [SAEConfig(d_latent, activation, k, l1, lr, seed)],
        epochs=epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_seed=seed if shuffle_seed is None else shuffle_seed,
        block_rows=block_rows,
        buffer_blocks=buffer_blocks,
        micro_batches=micro_batches,
        device=device,
        progress=progress,
        checkpoint_dirs=None if checkpoint_dir is None else [checkpoint_dir],
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    return result


def train_saes(
    acts: ActivationSet | Tensor | Rows,
    configs: list[SAEConfig],
    *,
    epochs: int = 40,
    batch_size: int = 256,
    shuffle: Shuffle = "exact",
    shuffle_seed: int = 0,
    block_rows: int = 4096,
    buffer_blocks: int = 64,
    micro_batches: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dirs: list[str | Path] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> list[tuple[SparseAutoencoder, list[dict]]]:
    """Train several SAEs in one pass over the data, each as :func:`train_sae` would alone.

    Every batch is read once and given to each SAE in turn; each has its own
    optimiser, generator and checkpoint. With the same data order (``shuffle``,
    ``shuffle_seed``, ...) each result is bit-identical to training it alone.

    Under ``torch.distributed`` (``torchrun``) with W processes, each global batch of
    ``batch_size`` rows is split into W parts, one per rank, and
    :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients. Every
    rank runs the same number of steps (a rank whose part of the last batch is empty
    still takes part), all ranks end with identical weights, and rank 0 alone writes
    checkpoints.

    Args:
        acts: Rows in memory (ActivationSet or tensor) or an ActivationStore.
        configs: One :class:`SAEConfig` per SAE.
        epochs: Passes over the data.
        batch_size: Rows per optimiser step, over all ranks together.
        shuffle: ``"exact"``: a uniform permutation of all rows each epoch, rows
            gathered by index (for data that fits the page cache). ``"blocks"``: the
            rows in ``block_rows``-row blocks in random order, ``buffer_blocks`` blocks
            at a time read contiguously into a buffer and shuffled within it (for stores
            larger than memory).
        shuffle_seed: Seed of the data order; epoch ``e``'s order depends only on
            ``(shuffle_seed, e)``.
        block_rows: Rows per block for ``"blocks"``.
        buffer_blocks: Blocks per shuffle buffer for ``"blocks"``.
        micro_batches: Split each (per-rank) batch into this many parts whose
            gradients are accumulated: less memory, the same step.
        device: Where to train; default the rows' device.
        progress: Show a progress bar (rank 0).
        checkpoint_dirs: One folder per SAE for its checkpoint.
        checkpoint_every: Also checkpoint every this many steps within an epoch
            (needs ``checkpoint_dirs``); a resumed run continues from that step.
        resume: Continue every SAE from its checkpoint.

    Returns:
        One (sae, history) per config, in order.

    Example:
        >>> store = ActivationStore.open("acts/train")
        >>> results = train_saes(store, [SAEConfig(1024, seed=s) for s in range(4)], epochs=5)
        >>> [history[-1]["explained_variance"] for _, history in results]
    """
    rows = as_rows(acts, "acts")
    if len(rows) < 2:
        raise ValueError("acts must be an ActivationSet, an ActivationStore or an (N, M) tensor with N >= 2")
    if not isinstance(configs, (list, tuple)) or not configs or not all(isinstance(c, SAEConfig) for c in configs):
        raise TypeError(f"configs must be a non-empty list of SAEConfig, got {configs!r}")
    epochs, batch_size = check_int(epochs, "epochs", 1), check_int(batch_size, "batch_size", 1)
    micro_batches = check_int(micro_batches, "micro_batches", 1)
    order = _DataOrder(len(rows), shuffle, check_int(shuffle_seed, "shuffle_seed"), block_rows, buffer_blocks)
    if checkpoint_dirs is not None and len(checkpoint_dirs) != len(configs):
        raise ValueError(
            f"checkpoint_dirs must hold one folder per config ({len(configs)}), got {len(checkpoint_dirs)}"
        )
    if resume and checkpoint_dirs is None:
        raise ValueError(
            "resume=True needs checkpoint_dir (checkpoint_dirs for train_saes), where the checkpoints were written"
        )
    if checkpoint_every is not None:
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1)
        if checkpoint_dirs is None:
            raise ValueError(
                "checkpoint_every needs checkpoint_dir (checkpoint_dirs for train_saes), where they are written"
            )
    group = ProcessGroup()

    statistics = rows.finite_statistics("acts", "; drop or fix those rows before training")
    if statistics.total_variance == 0:
        raise ValueError(f"acts are {len(rows)} copies of one row: there is no variation for an SAE to learn")
    device = as_device(device) if device is not None else rows.block(0, 1).device  # a store's: the CPU
    if isinstance(acts, (ActivationSet, Tensor)):  # moved once, not batch by batch
        features = acts.features if isinstance(acts, ActivationSet) else acts
        rows = as_rows(ActivationSet(features.to(device, torch.float32), rows.labels, rows.site, rows.model))
    data_settings = {
        "batch_size": batch_size,
        "epochs": epochs,
        "rows": len(rows),
        "data_mean_sum": float(statistics.mean.sum()),
        **order.settings(),
        "batch_parts": micro_batches * group.size,
    }
    runs = [_Run(config, rows, statistics, device, data_settings, group) for config in configs]
    resume_step = 0
    if resume:
        positions = {run.load(Path(folder)) for run, folder in zip(runs, checkpoint_dirs, strict=True)}
        if len(positions) != 1:
            raise ValueError(f"the checkpoints in {checkpoint_dirs} stopped at different points {sorted(positions)}")
        _, resume_step = positions.pop()
    first_epoch = len(runs[0].history)

    n_steps = math.ceil(len(rows) / batch_size)
    bar = tqdm(
        total=epochs * n_steps,
        initial=first_epoch * n_steps + resume_step,
        desc="SAE" if len(runs) == 1 else f"{len(runs)} SAEs",
        disable=not progress or group.rank != 0,
    )
    for epoch in range(first_epoch, epochs):
        reader = order.reader(rows, epoch)
        for step in range(resume_step, n_steps):
            batch = reader.positions(step * batch_size, min((step + 1) * batch_size, len(rows)))
            parts = batch.tensor_split(group.size * micro_batches)[group.rank * micro_batches :][:micro_batches]
            inputs = [reader.read(part).to(device) for part in parts]
            for run in runs:
                run.step(inputs, len(batch))
            bar.update(1)
            if progress and group.rank == 0 and len(runs) == 1:
                bar.set_postfix(runs[0].postfix(), refresh=False)
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < n_steps:
                for run, folder in zip(runs, checkpoint_dirs, strict=True):
                    run.save(Path(folder), step + 1)
        resume_step = 0
        for run in runs:
            run.finish_epoch(epoch, epochs)
        if checkpoint_dirs is not None:
            for run, folder in zip(runs, checkpoint_dirs, strict=True):
                run.save(Path(folder), 0)
    bar.close()
    return [run.result() for run in runs]


def checkpoint_folder(folder: str | Path) -> Path:
    """Where the training of the SAE saved to ``folder`` keeps its checkpoints: ``<folder>.training`` beside it.

    Example:
        >>> checkpoint_folder("out/sae-relu")
        PosixPath('out/sae-relu.training')
    """
    folder = Path(folder)
    return folder.with_name(f"{folder.name}.training")


def _seeded(*keys: int) -> torch.Generator:
    """A generator whose seed is a hash of ``keys``: independent streams for (seed, epoch, buffer)."""
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class _DataOrder:
    """The order rows are read in, epoch by epoch: a function of (shuffle seed, epoch) alone."""

    def __init__(self, rows: int, shuffle: Shuffle, seed: int, block_rows: int, buffer_blocks: int) -> None:
        if shuffle not in ("exact", "blocks"):
            raise ValueError(f"shuffle must be 'exact' or 'blocks', got {shuffle!r}")
        self.rows, self.shuffle, self.seed = rows, shuffle, seed
        self.block_rows = check_int(block_rows, "block_rows", 1)
        self.buffer_blocks = check_int(buffer_blocks, "buffer_blocks", 1)

    def settings(self) -> dict:
        settings = {"shuffle": self.shuffle, "shuffle_seed": self.seed}
        if self.shuffle == "blocks":
            settings.update(block_rows=self.block_rows, buffer_blocks=self.buffer_blocks)
        return settings

    def reader(self, rows: Rows, epoch: int) -> _ExactReader | _BufferedReader:
        if self.shuffle == "exact":
            return _ExactReader(rows, torch.randperm(self.rows, generator=_seeded(self.seed, epoch)))
        blocks = torch.randperm(math.ceil(self.rows / self.block_rows), generator=_seeded(self.seed, epoch))
        return _BufferedReader(rows, blocks, self.block_rows, self.buffer_blocks, (self.seed, epoch))


class _ExactReader:
    """Rows gathered by index from one permutation of all of them."""

    def __init__(self, rows: Rows, permutation: Tensor) -> None:
        self.rows, self.permutation = rows, permutation

    def positions(self, start: int, stop: int) -> Tensor:
        return self.permutation[start:stop]

    def read(self, index: Tensor) -> Tensor:
        return self.rows.rows(index)


class _BufferedReader:
    """Blocks in random order, ``buffer_blocks`` at a time read contiguously and shuffled in memory.

    :meth:`positions` gives positions within the current buffer, which :meth:`read`
    maps to rows; a buffer is read when a batch first reaches it, so memory holds at
    most two buffers (a batch may straddle two).
    """

    def __init__(self, rows: Rows, blocks: Tensor, block_rows: int, buffer_blocks: int, key: tuple) -> None:
        self.rows, self.block_rows, self.key = rows, block_rows, key
        sizes = (torch.minimum((blocks + 1) * block_rows, torch.tensor(len(rows))) - blocks * block_rows).tolist()
        self.buffers = [blocks[i : i + buffer_blocks].tolist() for i in range(0, len(blocks), buffer_blocks)]
        buffer_sizes = [sum(sizes[i : i + buffer_blocks]) for i in range(0, len(blocks), buffer_blocks)]
        self.starts = torch.tensor([0, *buffer_sizes]).cumsum(0)
        self.cache: dict[int, Tensor] = {}

    def positions(self, start: int, stop: int) -> Tensor:
        return torch.arange(start, stop)

    def read(self, positions: Tensor) -> Tensor:
        if len(positions) == 0:
            return torch.empty(0, self.rows.dim)
        buffer_of = torch.searchsorted(self.starts, positions, right=True) - 1
        pieces = []
        for buffer in buffer_of.unique().tolist():
            local = positions[buffer_of == buffer] - self.starts[buffer]
            pieces.append(self._buffer(buffer)[local])
        return torch.cat(pieces)

    def _buffer(self, index: int) -> Tensor:
        if index not in self.cache:
            for old in [i for i in self.cache if i < index]:
                del self.cache[old]
            block_rows = [self.rows.block(b * self.block_rows, (b + 1) * self.block_rows) for b in self.buffers[index]]
            data = torch.cat(block_rows)
            self.cache[index] = data[torch.randperm(len(data), generator=_seeded(*self.key, index))]
        return self.cache[index]


class _TrainingForward(nn.Module):
    """The SAE's forward as training runs it (its variant's training codes), the module DDP wraps."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # pre_activation's E (a − b_d) + b_e as E a + (b_e − E b_d): autograd then gets b_d's gradient
        # from a (d,) vector instead of an (N, d) × (d, M) product through the encoder's input, one of
        # a step's five large products. The two differ by float32 rounding; inference keeps the first
        # form, which other libraries' SAEs compute too (bit-equal loading, sae.formats).
        encoder = self.sae.encoder
        weight = encoder.weight
        pre = nn.functional.linear(a.to(weight.dtype), weight, encoder.bias - weight @ self.sae.decoder.bias)
        z = self.sae.code_activation.training_codes(pre)
        return self.sae.decode(z), z, pre


class _Run:
    """One SAE being trained: its model, optimiser, generator, epoch sums and history."""

    def __init__(
        self,
        config: SAEConfig,
        rows: Rows,
        statistics: RowStatistics,
        device: torch.device,
        data_settings: dict,
        group: ProcessGroup,
    ) -> None:
        variant, l1, lr, seed = config.checked()
        self.rows, self.group, self.variant = rows, group, variant
        self.generator = torch.Generator().manual_seed(seed)
        sae = SparseAutoencoder(rows.dim, config.d_latent, variant).to(device)
        with torch.no_grad():
            directions = torch.randn(rows.dim, config.d_latent, generator=self.generator)
            atoms = sae.code_activation.set_atoms_(sae, torch.arange(config.d_latent), directions.T.to(device))
            sae.decoder.bias.copy_(statistics.mean.float())
            sae.encoder.weight.copy_(atoms)
            sae.encoder.bias.zero_()
            sample = None
            if sample_rows := sae.code_activation.sample_rows:  # drawn only when asked: the others' streams stay
                index = torch.randperm(len(rows), generator=self.generator)[:sample_rows]
                sample = rows.rows(index).to(device, torch.float32)
            sae.code_activation.prepare(sae, statistics, sample)
        sae.site, sae.model = rows.site, rows.model
        self.sae = sae
        self.optimizer = _adam(list(self.sae.parameters()), lr, device)
        self.l1, self.mean = l1, statistics.mean.to(device, torch.float32)
        self.total_variance = statistics.total_variance
        self.total_variance_tensor = torch.tensor(statistics.total_variance, dtype=torch.float32, device=device)
        self.active_threshold = self.sae.active_threshold(statistics)
        self.settings = {**self.sae.config(), "l1": l1, "lr": lr, "seed": seed, **data_settings}
        self.history: list[dict] = []
        # For AuxK: rows seen since each latent last fired; dead from as many rows as the data holds (≤ 10M) on.
        self.rows_since_fired = torch.zeros(config.d_latent, dtype=torch.long, device=device)
        self.dead_after_rows = min(len(rows), _DEAD_AFTER_ROWS)
        self.forward = _TrainingForward(self.sae)
        if group.active:  # under torchrun, even alone: the same code path on 1 GPU as on 64
            ids = [device.index] if device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(self.forward, device_ids=ids)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.stats = ReconstructionStats(
            self.mean, self.sae.d_latent, self.active_threshold, total_variance=self.total_variance
        )
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.mean.device)

    def step(self, parts: list[Tensor], batch_rows: int) -> None:
        """One optimiser step on this rank's parts of a global batch of ``batch_rows`` rows."""
        self.optimizer.zero_grad(set_to_none=True)
        dead = self.rows_since_fired >= self.dead_after_rows
        fired = torch.zeros_like(dead)
        for i, a in enumerate(parts):
            last = i == len(parts) - 1
            with self.forward.no_sync() if self.group.active and not last else nullcontext():
                a_hat, z, pre = self.forward(a)
                squared_error = (a - a_hat).pow(2).sum()
                batch = TrainingBatch(
                    self.sae, a, pre, z, a_hat, squared_error, self.total_variance_tensor, self.l1, dead
                )
                loss = self.sae.code_activation.loss(batch) / batch_rows
                # DDP averages over ranks; scaling by their number makes the step the global batch's mean.
                (loss * self.group.size).backward()
            fired |= self.stats.update(a, a_hat.detach(), z.detach(), squared_error.detach())
            self.loss_sum.add_(loss.detach(), alpha=batch_rows)
        self.optimizer.step()
        self.sae.normalize_decoder_()
        self.sae.code_activation.after_step()
        fired = self.group.sum_(fired.int()) > 0  # fired on any rank (alone: unchanged)
        self.rows_since_fired.add_(batch_rows).masked_fill_(fired, 0)

    def postfix(self) -> dict:
        if self.stats.rows == 0:
            return {}
        summary = self.stats.summary()
        return {
            "loss": f"{float(self.loss_sum) / self.stats.rows:.4f}",
            "L0": f"{summary['l0']:.1f}",
            "EV": f"{summary['explained_variance']:.3f}",
        }

    def finish_epoch(self, epoch: int, epochs: int) -> None:
        """Sum the epoch over ranks, resample dead latents, and add the epoch to the history."""
        self.group.sum_(self.stats.sums)
        self.group.sum_(self.loss_sum)
        fired = self.group.sum_(self.stats.fired.int()) > 0
        self.stats.fired = fired
        self.stats.rows = len(self.rows)
        metrics = {"loss": float(self.loss_sum) / len(self.rows), **self.stats.summary()}
        resampled = 0
        if self.variant.resamples_dead and epoch < epochs - 1:
            pool_rows = max(1, min(_RESAMPLE_POOL, int(len(self.rows) * _RESAMPLE_POOL_SHARE)))
            chosen = torch.randperm(len(self.rows), generator=self.generator)[:pool_rows]
            if not fired.all():  # the pool is read only when a latent is dead; the generator moves on either way
                pool = self.rows.rows(chosen).to(fired.device)
                resampled = _resample_dead(self.sae, self.optimizer, pool, fired, self.generator)
        if not math.isfinite(metrics["loss"]):
            raise ValueError(
                f"SAE training diverged in epoch {epoch + 1} (loss {metrics['loss']}); lower lr "
                f"(now {self.settings['lr']:g}) or rescale the activations"
            )
        self.history.append({"epoch": epoch + 1, **metrics, "resampled": resampled})
        self._new_epoch()

    def result(self) -> tuple[SparseAutoencoder, list[dict]]:
        training = {key: value for key, value in self.settings.items() if key not in self.sae.config()}
        self.sae.metadata.update({"training": training})
        return self.sae, self.history

    def save(self, directory: Path, step: int) -> None:
        """Write the state (rank 0) after ``step`` steps of the current epoch; every rank waits for it.

        Within an epoch the ranks' running sums are added up for the file; on resuming,
        rank 0 takes them and the others start from zero, so the epoch's totals are kept.
        """
        epoch_sums = None
        if step:
            epoch_sums = {
                "epoch.sums": self.group.sum_(self.stats.sums.clone()),
                "epoch.fired": self.group.sum_(self.stats.fired.int()) > 0,
                "epoch.loss_sum": self.group.sum_(self.loss_sum.clone()),
            }
        if self.group.rank == 0:
            _save_checkpoint(directory, self, step, epoch_sums)
        self.group.barrier()

    def load(self, directory: Path) -> tuple[int, int]:
        """Read a checkpoint; returns (finished epochs, steps into the next)."""
        return _load_checkpoint(directory, self)


def _adam(parameters: list[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam, its step fused into one kernel where torch has that for ``device`` (CUDA; the CPU from torch 2.4).

    On the CPU the fused step of an SAE's four tensors takes a third of the time of the
    per-tensor loop; the two differ by float32 rounding only.
    """
    fused = device.type == "cuda" or (device.type == "cpu" and TorchVersion(torch.__version__) >= "2.4")
    return torch.optim.Adam(parameters, lr=lr, fused=fused or None)


@torch.no_grad()
def _resample_dead(
    sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, pool: Tensor, fired: Tensor, generator: torch.Generator
) -> int:
    """Point latents that never fired at the pool rows reconstructed worst; returns how many."""
    dead = (~fired).nonzero().squeeze(1)
    if len(dead) == 0:
        return 0
    a_hat, _ = sae(pool)
    residual = pool - a_hat
    weights = residual.pow(2).sum(dim=1).double().cpu().square() + 1e-12
    chosen = torch.multinomial(weights, len(dead), replacement=len(dead) > len(pool), generator=generator)
    alive_norm = sae.encoder.weight[fired].norm(dim=1).mean() if fired.any() else torch.tensor(1.0)
    atoms = sae.code_activation.set_atoms_(sae, dead, residual[chosen.to(pool.device)])
    sae.encoder.weight[dead] = atoms * alive_norm * sae.code_activation.resample_encoder_scale
    sae.encoder.bias[dead] = 0.0
    # Adam's running moments belong to the old latents: restart them.
    decoder = sae.code_activation.atom_parameters(sae)
    for param, index_dim in (*decoder, (sae.encoder.weight, 0), (sae.encoder.bias, 0)):
        for moment in ("exp_avg", "exp_avg_sq"):
            state = optimizer.state.get(param, {})
            if moment in state:
                state[moment].index_fill_(index_dim, dead, 0.0)
    return len(dead)


def _save_checkpoint(directory: Path, run: _Run, step: int, epoch_sums: dict[str, Tensor] | None) -> None:
    tensors = {f"sae.{name}": t.detach().cpu().contiguous() for name, t in run.sae.state_dict().items()}
    optim_state = run.optimizer.state_dict()
    for index, state in optim_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["generator"] = run.generator.get_state()
    tensors["rows_since_fired"] = run.rows_since_fired.cpu()
    tensors.update({name: value.cpu() for name, value in (epoch_sums or {}).items()})
    meta = {"settings": run.settings, "history": run.history, "param_groups": optim_state["param_groups"], "step": step}
    with atomic_path(directory / CHECKPOINT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta)})


def _load_checkpoint(directory: Path, run: _Run) -> tuple[int, int]:
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
    old = meta["settings"]
    differences = {key: (old.get(key), value) for key, value in run.settings.items() if old.get(key) != value}
    if differences:
        listed = ", ".join(f"{key}: checkpoint {was!r} vs now {now!r}" for key, (was, now) in differences.items())
        raise ValueError(f"the checkpoint in {str(directory)!r} was written with other settings or data ({listed})")
    tensors = load_file(str(path))
    device = run.mean.device
    run.sae.load_state_dict({name[4:]: t for name, t in tensors.items() if name.startswith("sae.")})
    state: dict[int, dict] = {}
    params = list(run.sae.parameters())
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            param = params[int(index)]
            # A moment takes its parameter's memory layout, as Adam creates it: the fused step walks both alike.
            if value.shape == param.shape:
                value = torch.empty_like(param, dtype=value.dtype).copy_(value)
            state.setdefault(int(index), {})[key] = value
    run.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    run.generator.set_state(tensors["generator"])
    if "rows_since_fired" in tensors:  # checkpoints before AuxK did not count
        run.rows_since_fired.copy_(tensors["rows_since_fired"])
    run.history = meta["history"]
    step = meta.get("step", 0)
    if step and run.group.rank == 0:
        run.stats.sums.copy_(tensors["epoch.sums"])
        run.stats.fired = tensors["epoch.fired"].to(device)
        run.loss_sum.copy_(tensors["epoch.loss_sum"])
    return len(run.history), step
