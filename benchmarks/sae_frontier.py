"""Our SAE variants beside overcomplete's, on the same activations: EV-vs-L0 frontier, dead latents, speed, stability.

The activations are the demo digits ResNet-18's head input (its classifier from the cache,
``$CAPTUM_SALVE_CACHE``, or trained): the training canvases (1,348 rows × 512, one draw;
``--train-copies 2`` gives the pipeline's 2,696) and the 449 test canvases. Every variant
is trained at several sparsity settings, from several seeds, by us
(:func:`~captum_salve.sae.train_sae`) and, where it has one, by the matching class of
overcomplete 0.3.0, with 256 latents, the same epochs, batches of the same rows in the
same order (our ``shuffle="exact"`` permutation of each epoch) and Adam at the same
learning rate. Per setting the table gives the mean over seeds of

- explained variance and L0 on the test rows (our :func:`~captum_salve.sae.sae_metrics`;
  the same :class:`~captum_salve.sae.metrics.ReconstructionStats` for the peer);
- dead fraction: latents never active on the training rows after training;
- spliced accuracy: the classifier's head applied to the reconstruction of the test rows;
- seed stability: the decoders of every pair of seeds matched by Hungarian assignment on
  |cosine| (:func:`~captum_salve.analysis.match_features`), the mean matched |cosine|,
  averaged over pairs;
- training seconds, ours and the peer's timed side by side in one process, the order
  alternating from seed to seed (:func:`benchmarks.timing.time_interleaved`); the ratio
  is the median of ours / peer over the seeds (per variant: over all its settings and seeds).

Then, per variant both libraries have, whether our frontier is on or above the peer's
(:func:`frontier_margins`: at each point of the peer's Pareto frontier, our frontier's
explained variance at that L0, interpolated linearly in log L0, minus the peer's).

The pairs (ours ↔ overcomplete 0.3.0): ``linear`` ↔ ``SAE`` with an identity output
activation (it has no linear-code class); ``relu`` ↔ ``SAE`` with ``mse_l1``; ``topk``
(resampling dead latents) ↔ ``TopKSAE``; ``topk+auxk`` (``TopK(k, aux_k=128,
resample=False)``) ↔ ``TopKSAE`` with ``top_k_auxiliary_loss``; ``batchtopk`` ↔
``BatchTopKSAE`` (``top_k = k × batch``); ``jumprelu`` ↔ ``JumpSAE`` with an L0 penalty
through its ``heaviside``; ``archetypal`` ↔ ``RATopKSAE`` with its defaults (δ = 1, a learnt
multiplier) and every scaled training row a point of its hull (ours: k-means centroids, δ =
0.1 of their scale, unit atoms). overcomplete 0.3.0 has no Matryoshka SAE; a variant without
a counterpart is shown alone.

How the peer is trained, and what differs from ours:

- Its SAEs have no decoder bias, so they get the rows centred on the training mean and
  divided by the training rows' spread (unit root-mean-square per coordinate,
  :attr:`~captum_salve.store.RowStatistics.spread`); reconstructions are mapped back, and
  codes are scaled by the spread and each atom's norm, before they are measured.
- Its own loop, ``overcomplete.sae.train_sae(..., clip_grad=None, monitoring=0)``: no
  gradient clipping (ours has none) and no per-step metrics (its leanest loop; it still
  tracks dead codes). Ours keeps its per-epoch history (loss, EV, L0, dead fraction).
- Its initialisation (Xavier dictionary, PyTorch's ``nn.Linear`` encoder), seeded with
  ``torch.manual_seed(seed)``; ours starts from a random unit decoder with the encoder
  its transpose and the decoder bias at the data mean, and resamples latents that stayed
  dead for an epoch (ReLU, TopK).
- The same objective where both have an L1 term: ours is
  ``(‖a − â‖²/s² + l1 Σ|z|/s) / B`` (s² the data's total variance, B the batch), the
  peer's ``mse_l1`` is ``mean (x − x̂)² + p Σ|z|`` over the batch, which on the scaled
  rows is the same loss when ``p = l1 / (B √M)`` (M = 512). Likewise the L0 penalty of
  the JumpReLU pair: ours ``(‖a − â‖²/s² + l1 · #open) / B``, the peer's
  ``mean (x − x̂)² + (l1 / B) · Σ H(pre − θ)``.
- The AuxK losses differ: ours reconstructs the residual from the ``aux_k`` largest
  pre-activations among latents dead for an epoch's rows, weighted 1/32 and scaled by
  the residual's variance; the peer's from the top half of the latents the top k left
  out (dead or not), weighted 0.1 on its mean squared error.
- BatchTopK: the peer keeps ``k × 256`` codes per batch, also in the short last batch
  of an epoch (68 rows), and infers with a running threshold of momentum 0.9; ours keeps
  ``k × rows`` and infers with a running mean of momentum 0.01.
- JumpReLU: the peer learns ``log θ`` (starting at θ = e⁻³ = 0.05 of the spread) with a
  Silverman kernel; ours θ itself (from 0.001 of the spread) with a rectangle kernel. Both
  use our bandwidth, 0.1 of the spread (with the peer's default, 0.001, its thresholds move
  less still). Adam moves θ (ours) or log θ (the peer's) by at most ``lr`` a step, so over
  these 240 steps L0 follows ``l1`` only up to that bound: ours from 133 to 81 as ``l1``
  goes from 1e-4 to 1e-2 (no further for larger ones), the peer's from 130 to 128.
- Ours fuses Adam's step (one kernel, torch ≥ 2.4 on the CPU); the peer gets
  ``torch.optim.Adam(model.parameters(), lr)``, as overcomplete's README builds it.

Install the peer beside the package, never into it (``pip install overcomplete==0.3.0``,
the ``bench`` extra; it imports OpenCV and scikit-image, and its
``overcomplete.visualization`` calls ``matplotlib.cm.get_cmap``, gone since matplotlib 3.9,
which :func:`import_overcomplete` supplies from ``matplotlib.colormaps``). Without it
only our rows are printed.

Example:
    $ PYTHONPATH=.:/work/frontier-site python -m benchmarks.sae_frontier --json frontier.json
    $ python -m benchmarks.sae_frontier --quick
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType

import torch
from torch import Tensor, nn

from benchmarks.results import markdown_table
from benchmarks.timing import Timings, time_interleaved
from captum_salve.activations import ActivationSet, collect_activations
from captum_salve.analysis import match_features
from captum_salve.data import DigitsCanvas
from captum_salve.models import find_head
from captum_salve.sae import SparseAutoencoder, sae_metrics, train_sae
from captum_salve.sae.metrics import ReconstructionStats
from captum_salve.sae.train import _seeded
from captum_salve.sae.variants import TopK
from captum_salve.store import RowStatistics
from captum_salve.zoo import digits_classifier

D_LATENT = 256
BATCH_SIZE = 256
LR = 1e-3

LINEAR_L1 = (0.02, 0.05, 0.2)
RELU_L1 = (0.01, 0.03, 0.05, 0.1, 0.3)
JUMPRELU_L1 = (1e-4, 3e-4, 1e-3, 1e-2)
TOPK_K = (8, 16, 32)
# overcomplete's AuxK reconstructs the residual from the top half of the latents the top k left out;
# ours from the aux_k largest of the dead ones: given as many.
AUX_K = D_LATENT // 2
# Our JumpReLU's straight-through bandwidth, 0.1 × the data's spread, in the peer's units (spread 1).
JUMP_BANDWIDTH = 0.1


@dataclass(frozen=True)
class Setting:
    """One sparsity setting of one variant, as ours and the peer train it.

    Attributes:
        variant: Our variant's name (``"relu"``, ``"topk"``, ...).
        name: The setting, e.g. ``"k=16"``.
        ours: :func:`~captum_salve.sae.train_sae` keywords (``activation``, ``k``, ``l1``).
        peer: The peer's class shown in the table, None when it has no counterpart.
        sparsity: ``l1`` or ``k``, from which the peer's setting follows.
    """

    variant: str
    name: str
    ours: dict
    peer: str | None
    sparsity: float

    @property
    def key(self) -> tuple[str, str]:
        """(variant, name): what tells settings apart."""
        return self.variant, self.name


@dataclass(frozen=True)
class DemoActs:
    """The demo classifier's head inputs and its head.

    Attributes:
        train: Labelled training rows the SAEs are trained on.
        test: Labelled test rows they are measured on.
        head: The classifier's final linear layer.
    """

    train: ActivationSet
    test: ActivationSet
    head: nn.Linear


@dataclass(frozen=True)
class PeerScale:
    """The map between our rows and the peer's: centred on ``mean`` and divided by ``spread``.

    Example:
        >>> scale = PeerScale.of(torch.tensor([[0.0, 2.0], [2.0, 4.0]]))
        >>> scale.to_peer(torch.tensor([[1.0, 3.0]]))
        tensor([[0., 0.]])
    """

    mean: Tensor
    spread: float

    @classmethod
    def of(cls, rows: Tensor) -> PeerScale:
        """The scale of ``rows``: their mean and spread (root mean square of one coordinate's deviation)."""
        stats = RowStatistics.of(rows)
        return cls(stats.mean.float(), stats.spread)

    def to_peer(self, a: Tensor) -> Tensor:
        """Rows as the peer sees them."""
        return (a - self.mean) / self.spread

    def from_peer(self, x: Tensor) -> Tensor:
        """The peer's rows (a reconstruction) back in ours."""
        return x * self.spread + self.mean


@dataclass
class Result:
    """What one library's SAEs of one setting scored, one entry per seed.

    Attributes:
        setting: The setting.
        library: ``"ours"`` or ``"overcomplete"``.
        metrics: Per seed: ``explained_variance``, ``l0``, ``dead_fraction`` (training rows)
            and ``spliced_accuracy``.
        directions: Per seed, the (M, d) unit feature directions.
        seconds: Per seed, the training time.
    """

    setting: Setting
    library: str
    metrics: list[dict] = field(default_factory=list)
    directions: list[Tensor] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def mean(self, key: str) -> float:
        """The mean over seeds of one metric."""
        return statistics.fmean(m[key] for m in self.metrics)

    @property
    def point(self) -> tuple[float, float]:
        """(L0, explained variance), means over seeds."""
        return self.mean("l0"), self.mean("explained_variance")


def settings() -> list[Setting]:
    """Every variant at each of its sparsity settings, in order of sparsity within a variant."""
    return [
        *[
            Setting("linear", f"l1={l1:g}", {"activation": "linear", "l1": l1}, "SAE (identity)", l1)
            for l1 in LINEAR_L1
        ],
        *[Setting("relu", f"l1={l1:g}", {"activation": "relu", "l1": l1}, "SAE", l1) for l1 in RELU_L1],
        *[Setting("topk", f"k={k}", {"activation": "topk", "k": k}, "TopKSAE", k) for k in TOPK_K],
        *[
            Setting("topk+auxk", f"k={k}", {"activation": TopK(k, aux_k=AUX_K, resample=False)}, "TopKSAE + AuxK", k)
            for k in TOPK_K
        ],
        *[Setting("batchtopk", f"k={k}", {"activation": "batchtopk", "k": k}, "BatchTopKSAE", k) for k in TOPK_K],
        *[
            Setting("jumprelu", f"l1={l1:g}", {"activation": "jumprelu", "l1": l1}, "JumpSAE + L0", l1)
            for l1 in JUMPRELU_L1
        ],
        *[Setting("matryoshka", f"k={k}", {"activation": "matryoshka", "k": k}, None, k) for k in TOPK_K],
        *[Setting("archetypal", f"k={k}", {"activation": "archetypal", "k": k}, "RATopKSAE", k) for k in TOPK_K],
    ]


def import_overcomplete() -> ModuleType | None:
    """``overcomplete.sae`` (0.3.0), or None when overcomplete is not installed.

    Its package imports its plotting module, which calls ``matplotlib.cm.get_cmap``
    (removed in matplotlib 3.9): where that is missing it is supplied as
    ``matplotlib.colormaps.get_cmap``, which the benchmark never calls.
    """
    try:
        import matplotlib.cm
    except ImportError:  # overcomplete's import fails below with its own message
        pass
    else:
        if not hasattr(matplotlib.cm, "get_cmap"):
            matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    try:
        import overcomplete.sae
    except ImportError:
        return None
    return overcomplete.sae


def demo_acts(train_copies: int = 1) -> DemoActs:
    """Head inputs of the demo digits ResNet-18 (cached classifier) on the training and test canvases."""
    model = digits_classifier("resnet18", device="cpu", progress=False).model
    train = collect_activations(model, DigitsCanvas("train", copies=train_copies), progress=False)
    test = collect_activations(model, DigitsCanvas("test"), progress=False)
    return DemoActs(train, test, find_head(model)[1])


def epoch_order(rows: int, shuffle_seed: int, epoch: int) -> Tensor:
    """The row order of one epoch of ``train_sae(..., shuffle="exact", shuffle_seed=shuffle_seed)``."""
    return torch.randperm(rows, generator=_seeded(shuffle_seed, epoch))


class Batches:
    """Batches of rows in :func:`epoch_order`, one epoch per iteration: the peer's data loader.

    Example:
        >>> batches = Batches(torch.arange(5.0)[:, None], batch_size=2, shuffle_seed=0)
        >>> [len(b) for b in batches]
        [2, 2, 1]
    """

    def __init__(self, rows: Tensor, batch_size: int, shuffle_seed: int) -> None:
        self.rows, self.batch_size, self.shuffle_seed, self.epoch = rows, batch_size, shuffle_seed, 0

    def __iter__(self) -> Iterator[Tensor]:
        order = epoch_order(len(self.rows), self.shuffle_seed, self.epoch)
        self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            yield self.rows[order[start : start + self.batch_size]]


def peer_penalty(l1: float, batch_size: int, width: int) -> float:
    """The peer's ``mse_l1`` penalty whose loss on the scaled rows equals ours with ``l1``: ``l1 / (B √M)``.

    Example:
        >>> peer_penalty(0.05, 256, 512) == 0.05 / (256 * 512**0.5)
        True
    """
    return l1 / (batch_size * math.sqrt(width))


def peer_model(sae: ModuleType, setting: Setting, x: Tensor, batch_size: int) -> tuple[nn.Module, Callable]:
    """The peer's SAE and loss (overcomplete's signature) for one setting; ``x``, the scaled training rows."""
    variant, k, width = setting.variant, int(setting.sparsity), x.shape[1]
    if variant in ("linear", "relu"):
        encoder = None
        if variant == "linear":
            encoder = sae.MLPEncoder(
                width, D_LATENT, nb_blocks=0, norm_layer=nn.Identity, output_activation=nn.Identity
            )
        penalty = peer_penalty(setting.sparsity, batch_size, width)
        return sae.SAE(width, D_LATENT, encoder_module=encoder), partial(sae.losses.mse_l1, penalty=penalty)
    if variant == "topk":
        return sae.TopKSAE(width, D_LATENT, top_k=k), _mse
    if variant == "topk+auxk":
        return sae.TopKSAE(width, D_LATENT, top_k=k), sae.losses.top_k_auxiliary_loss
    if variant == "batchtopk":
        return sae.BatchTopKSAE(width, D_LATENT, top_k=k * batch_size), _mse
    if variant == "archetypal":  # its defaults (δ 1, a learnt multiplier), every training row a point of the hull
        return sae.RATopKSAE(width, D_LATENT, points=x, top_k=k), _mse
    if variant == "jumprelu":
        model = sae.JumpSAE(width, D_LATENT, bandwidth=JUMP_BANDWIDTH)
        penalty = setting.sparsity / batch_size  # ours: (‖a − â‖²/s² + l1 · #open codes) / B

        def loss(x: Tensor, x_hat: Tensor, pre: Tensor, *_: Tensor) -> Tensor:
            opened = sae.heaviside(pre, torch.exp(model.thresholds), model.kernel_fn, model.bandwidth)
            return _mse(x, x_hat) + penalty * opened.sum()

        return model, loss
    raise ValueError(f"no peer for variant {variant!r}")


def _mse(x: Tensor, x_hat: Tensor, *_: Tensor) -> Tensor:
    return (x - x_hat).square().mean()


def train_peer(
    sae: ModuleType, setting: Setting, x: Tensor, seed: int, epochs: int, batch_size: int = BATCH_SIZE
) -> nn.Module:
    """Train the peer's SAE of a setting on scaled rows ``x`` with its own loop (see the module docstring)."""
    torch.manual_seed(seed)
    model, criterion = peer_model(sae, setting, x, batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    with contextlib.redirect_stdout(io.StringIO()):
        sae.train_sae(
            model, Batches(x, batch_size, seed), criterion, optimizer, nb_epochs=epochs, clip_grad=None, monitoring=0
        )
    return model.eval()


def train_ours(setting: Setting, acts: ActivationSet, seed: int, epochs: int) -> SparseAutoencoder:
    """Train our SAE of a setting."""
    options = {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": LR, "seed": seed, "progress": False}
    sae, _ = train_sae(acts, D_LATENT, **setting.ours, **options)
    return sae


def our_metrics(sae: SparseAutoencoder, acts: DemoActs) -> dict:
    """Explained variance, L0 and spliced accuracy on the test rows, dead fraction on the training rows."""
    test = sae_metrics(sae, acts.test, head=acts.head)
    return {**_scores(test), "dead_fraction": sae_metrics(sae, acts.train)["dead_fraction"]}


@torch.no_grad()
def peer_metrics(model: nn.Module, scale: PeerScale, acts: DemoActs, relative_threshold: float) -> dict:
    """:func:`our_metrics` of a trained peer SAE, through the same :class:`ReconstructionStats`.

    Codes are measured in our units (times the spread and each atom's norm), so that a
    variant's ``relative_threshold`` (0 but for ``"linear"``) means what it means for ours.
    """
    norms = model.get_dictionary().norm(dim=1)
    metrics = {}
    for name, rows in (("test", acts.test), ("train", acts.train)):
        a = rows.features.float()
        _, z = model.encode(scale.to_peer(a))
        a_hat = scale.from_peer(model.decode(z))
        stats = RowStatistics.of(a)
        recorder = ReconstructionStats(stats.mean, len(norms), relative_threshold * stats.spread)
        recorder.update(a, a_hat, z * norms * scale.spread)
        spliced = (acts.head(a_hat).argmax(1) == rows.labels).double().mean()
        metrics[name] = {**recorder.summary(), "spliced_accuracy": float(spliced)}
    return {**_scores(metrics["test"]), "dead_fraction": metrics["train"]["dead_fraction"]}


def _scores(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("explained_variance", "l0", "spliced_accuracy")}


def peer_directions(model: nn.Module) -> Tensor:
    """The peer's (M, d) unit feature directions (its dictionary's rows, normalised, as columns)."""
    atoms = model.get_dictionary().detach()
    return (atoms / atoms.norm(dim=1, keepdim=True)).T.contiguous()


def seed_stability(directions: Sequence[Tensor]) -> float:
    """The mean matched |cosine| of the feature directions of SAEs of several seeds, averaged over pairs.

    Each pair is matched by Hungarian assignment on |cosine|
    (:func:`~captum_salve.analysis.match_features`).

    Args:
        directions: Per seed, (M, d) unit feature directions (a decoder's columns).

    Example:
        >>> seed_stability([torch.eye(3), torch.eye(3)[:, [2, 0, 1]]])
        1.0
    """
    if len(directions) < 2:
        raise ValueError(f"seed stability needs at least 2 seeds, got {len(directions)}")
    shells = [_shell(d) for d in directions]
    return statistics.fmean(
        float(match_features(first, second)[1].mean()) for first, second in itertools.combinations(shells, 2)
    )


def _shell(directions: Tensor) -> SparseAutoencoder:
    """An SAE holding ``directions`` as its decoder, for :func:`match_features`."""
    sae = SparseAutoencoder(*directions.shape, "linear")
    with torch.no_grad():
        sae.decoder.weight.copy_(directions)
    return sae


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (L0, EV) points no other point beats (at most its L0 and at least its EV), by increasing L0.

    Example:
        >>> pareto_frontier([(10, 0.8), (20, 0.7), (30, 0.9), (10, 0.6)])
        [(10, 0.8), (30, 0.9)]
    """
    frontier: list[tuple[float, float]] = []
    for l0, ev in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or ev > frontier[-1][1]:
            frontier.append((l0, ev))
    return frontier


def ev_at(frontier: Sequence[tuple[float, float]], l0: float) -> float | None:
    """A frontier's explained variance at ``l0``, None below its smallest L0.

    Between two of its points the EV is interpolated linearly in log L0; beyond its
    largest L0 it is the largest EV (a sparser SAE is allowed).

    Example:
        >>> round(ev_at([(10, 0.8), (40, 0.9)], 20), 6)  # 20 is halfway from 10 to 40 in log L0
        0.85
    """
    if not frontier or l0 < frontier[0][0]:
        return None
    for (l0_a, ev_a), (l0_b, ev_b) in itertools.pairwise(frontier):
        if l0 <= l0_b:
            share = math.log(l0 / l0_a) / math.log(l0_b / l0_a)
            return ev_a + share * (ev_b - ev_a)
    return frontier[-1][1]


def frontier_margins(
    ours: Sequence[tuple[float, float]], peer: Sequence[tuple[float, float]]
) -> list[tuple[float, float, float | None]]:
    """At each point of the peer's frontier: (its L0, its EV, our frontier's EV there minus its EV).

    The margin is None where our points do not reach so small an L0. Ours is on or
    above the peer's frontier when every margin that is not None is ≥ 0.

    Example:
        >>> margins = frontier_margins([(10, 0.8), (40, 0.9)], [(5, 0.7), (20, 0.8)])
        >>> [None if margin is None else round(margin, 3) for _, _, margin in margins]
        [None, 0.05]
    """
    margins = []
    for l0, ev in pareto_frontier(peer):
        at = ev_at(pareto_frontier(ours), l0)
        margins.append((l0, ev, None if at is None else at - ev))
    return margins


def run(acts: DemoActs, chosen: Sequence[Setting], seeds: int, epochs: int, peer: ModuleType | None) -> list[Result]:
    """Train and measure every setting, ours and (where it has one) the peer's; one Result per library and setting.

    Only the training calls are timed, in alternation (ours first for even seeds); the
    measurements come after.
    """
    scale = PeerScale.of(acts.train.features.float())
    x = scale.to_peer(acts.train.features.float())
    results = []
    for setting in chosen:
        start = time.perf_counter()
        results += _measure(setting, acts, scale, x, seeds, epochs, peer if setting.peer is not None else None)
        print(f"{setting.variant} {setting.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def _measure(
    setting: Setting, acts: DemoActs, scale: PeerScale, x: Tensor, seeds: int, epochs: int, peer: ModuleType | None
) -> list[Result]:
    """One setting: the SAEs of every seed trained (timed in alternation), then measured."""
    saes: list[SparseAutoencoder] = []
    models: list[nn.Module] = []
    candidates = {"ours": lambda: saes.append(train_ours(setting, acts.train, len(saes), epochs))}
    if peer is not None:
        candidates["overcomplete"] = lambda: models.append(train_peer(peer, setting, x, len(models), epochs))
    timings = time_interleaved(candidates, repeats=seeds, device=torch.device("cpu"), warmup=0)
    ours = Result(setting, "ours", seconds=timings.samples["ours"])
    for sae in saes:
        ours.metrics.append(our_metrics(sae, acts))
        ours.directions.append(sae.decoder_weight.detach().clone())
    if peer is None:
        return [ours]
    theirs = Result(setting, "overcomplete", seconds=timings.samples["overcomplete"])
    threshold = saes[0].code_activation.relative_active_threshold
    for model in models:
        theirs.metrics.append(peer_metrics(model, scale, acts, threshold))
        theirs.directions.append(peer_directions(model))
    return [ours, theirs]


def time_ratio(ours: Sequence[float], peer: Sequence[float]) -> float:
    """The median over seeds (rounds) of our training seconds over the peer's in the same round.

    Example:
        >>> time_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
        1.0
    """
    return Timings({"ours": list(ours), "peer": list(peer)}).ratio("ours", "peer")


def table(results: Sequence[Result]) -> str:
    """One Markdown row per library and setting: means over seeds, stability, seconds and the time ratio."""
    header = ["variant", "setting", "library (class)", "EV", "L0", "dead", "spliced acc", "stability", "train s"]
    peers = {r.setting.key: r for r in results if r.library != "ours"}
    cells = []
    for r in results:
        library = "ours" if r.library == "ours" else f"overcomplete ({r.setting.peer})"
        stability = f"{seed_stability(r.directions):.3f}" if len(r.directions) > 1 else "—"
        ratio = "—"
        if r.library == "ours" and r.setting.key in peers:
            ratio = f"{time_ratio(r.seconds, peers[r.setting.key].seconds):.2f}"
        cells.append(
            [r.setting.variant, r.setting.name, library, f"{r.mean('explained_variance'):.3f}", f"{r.mean('l0'):.1f}"]
            + [f"{r.mean('dead_fraction'):.1%}", f"{r.mean('spliced_accuracy'):.1%}", stability]
            + [f"{statistics.median(r.seconds):.2f}", ratio]
        )
    return markdown_table([*header, "time ours/peer"], "lllrrrrrrr", cells)


def verdicts(results: Sequence[Result]) -> list[dict]:
    """Per variant: its peer, whether our frontier is on or above the peer's, the margins, the time ratio, dead latents.

    The time ratio is the median over all the variant's settings and seeds of ours / peer
    in the same round; a variant without a peer has only its own columns.
    """
    rows = []
    for variant in dict.fromkeys(r.setting.variant for r in results):
        ours = [r for r in results if r.setting.variant == variant and r.library == "ours"]
        theirs = [r for r in results if r.setting.variant == variant and r.library != "ours"]
        row = {
            "variant": variant,
            "peer": theirs[0].setting.peer if theirs else None,
            "largest dead fraction (ours)": max(r.mean("dead_fraction") for r in ours),
        }
        if theirs:
            margins = frontier_margins([r.point for r in ours], [r.point for r in theirs])
            compared = [m for _, _, m in margins if m is not None]
            pairs = {t.setting.key: t.seconds for t in theirs}
            paired = [(o, p) for r in ours for o, p in zip(r.seconds, pairs.get(r.setting.key, []), strict=False)]
            row.update(
                {
                    "on or above the peer's frontier": bool(compared) and min(compared) >= 0,
                    "margins (peer L0, peer EV, ours - peer)": margins,
                    "time ratio ours/peer": time_ratio(*zip(*paired, strict=True)),
                    "largest dead fraction (peer)": max(r.mean("dead_fraction") for r in theirs),
                }
            )
        rows.append(row)
    return rows


def verdict_table(rows: Sequence[dict]) -> str:
    """:func:`verdicts` as a Markdown table."""
    header = ["variant", "peer", "ours on or above its frontier", "worst margin (at peer L0)"]
    header += ["peer points below our L0", "time ours/peer", "dead max: ours / peer"]
    cells = []
    for row in rows:
        ours = f"{row['largest dead fraction (ours)']:.1%}"
        if row["peer"] is None:
            cells.append([row["variant"], *["—"] * 5, f"{ours} / —"])
            continue
        margins = row["margins (peer L0, peer EV, ours - peer)"]
        compared = [(m, l0) for l0, _, m in margins if m is not None]
        worst = f"{min(compared)[0]:+.3f} ({min(compared)[1]:.1f})" if compared else "—"
        verdict = ("yes" if row["on or above the peer's frontier"] else "NO") if compared else "not compared"
        cells.append(
            [row["variant"], row["peer"], verdict, worst, str(len(margins) - len(compared))]
            + [f"{row['time ratio ours/peer']:.2f}", f"{ours} / {row['largest dead fraction (peer)']:.1%}"]
        )
    return markdown_table(header, "lllrrrl", cells)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, measure and print the two tables; optionally write every number to JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sae_frontier", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3, help="SAEs per setting and library (at least 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 5 epochs, 2 seeds")
    variants = sorted({s.variant for s in settings()})
    parser.add_argument("--variant", action="append", choices=variants, help="repeatable; default: every variant")
    parser.add_argument("--train-copies", type=int, default=1, help="training canvases per digit (the pipeline: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=str)
    args = parser.parse_args(argv)
    epochs, seeds = (5, 2) if args.quick else (args.epochs, args.seeds)
    if seeds < 2:
        parser.error("--seeds must be at least 2 (seed stability compares seeds)")
    torch.set_num_threads(args.threads)
    peer = import_overcomplete()
    if peer is None:
        print("overcomplete is not installed (pip install overcomplete==0.3.0): our rows only", file=sys.stderr)
    acts = demo_acts(args.train_copies)
    chosen = [s for s in settings() if not args.variant or s.variant in args.variant]
    _warm_up(acts, peer)
    results = run(acts, chosen, seeds, epochs, peer)
    rows = verdicts(results)
    with torch.no_grad():
        accuracy = float((acts.head(acts.test.features).argmax(1) == acts.test.labels).double().mean())
    print(
        f"{len(acts.train)} training rows × {acts.train.dim}, {len(acts.test)} test rows; {D_LATENT} latents, "
        f"{epochs} epochs, batch {BATCH_SIZE}, Adam {LR:g}, {seeds} seeds, {torch.get_num_threads()} thread(s); "
        f"unedited test accuracy {accuracy:.1%}\n"
    )
    print(table(results) + "\n")
    print(verdict_table(rows))
    output = {
        "settings": {"epochs": epochs, "seeds": seeds, "rows": len(acts.train), "threads": torch.get_num_threads()},
        "accuracy": accuracy,
        "results": [
            {
                "variant": r.setting.variant,
                "setting": r.setting.name,
                "library": r.library,
                "peer": r.setting.peer,
                "metrics": r.metrics,
                "seconds": r.seconds,
            }  # fmt: skip
            for r in results
        ],
        "verdicts": rows,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(output, handle, indent=2)
    return output


def _warm_up(acts: DemoActs, peer: ModuleType | None) -> None:
    """One short training of each library first, so that no timed call pays for first-call set-up."""
    relu = Setting("relu", "warm-up", {"activation": "relu", "l1": 0.05}, "SAE", 0.05)
    train_ours(relu, acts.train, 0, 1)
    if peer is not None:
        train_peer(peer, relu, PeerScale.of(acts.train.features).to_peer(acts.train.features), 0, 1)


if __name__ == "__main__":
    main()
