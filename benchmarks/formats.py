"""Other libraries' SAEs, saved by the libraries themselves and read by ``SparseAutoencoder.load``.

For each library that imports, an SAE is built with it, its weights randomised
(decoder columns of norm other than 1, decoder biases that matter), saved with the
library's own code and loaded with ours; the table gives the largest absolute
difference between the library's codes and reconstructions and ours on random
inputs, and whether the same latents fire. SAELens also reads back what
``save(layout="saelens")`` writes. The libraries are not dependencies of the
package: install them apart, for example

    pip install --target /work/formats-site overcomplete sae-lens eai-sparsify dictionary-learning

then run ``PYTHONPATH=.:/work/formats-site python -m benchmarks.formats``. A library
that does not import is reported and skipped.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from captum_salve import SparseAutoencoder

__all__ = ["Comparison", "compare_all"]

D_IN, D_SAE, K = 48, 192, 12


@dataclass(frozen=True)
class Comparison:
    """One SAE read both ways.

    Attributes:
        library: The library that saved it (and its version).
        kind: Its class or architecture, and what was folded.
        codes: Largest |difference| of the codes.
        reconstructions: Largest |difference| of the reconstructions of the library's codes.
        same_active: Whether exactly the same latents are non-zero.
        code_scale: Largest |code|, for scale.
        reconstruction_scale: Largest |reconstruction|, for scale.

    Example:
        >>> Comparison("overcomplete 0.3.0", "TopKSAE", 0.0, 2e-7, True, 14.0, 9.5).row()
        '| overcomplete 0.3.0 | TopKSAE | 0 (of 14) | 2e-07 (of 9.5) | yes |'
    """

    library: str
    kind: str
    codes: float
    reconstructions: float
    same_active: bool
    code_scale: float
    reconstruction_scale: float

    def row(self) -> str:
        """The comparison as a Markdown table row."""
        same = "yes" if self.same_active else "NO"
        codes = f"{self.codes:.3g} (of {self.code_scale:.3g})"
        reconstructions = f"{self.reconstructions:.3g} (of {self.reconstruction_scale:.3g})"
        return f"| {self.library} | {self.kind} | {codes} | {reconstructions} | {same} |"


def _randomise(module: nn.Module, seed: int) -> None:
    """Every floating parameter and buffer of ``module`` redrawn (biases included), reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)


def _compare(
    library: str, kind: str, ours: SparseAutoencoder, x: Tensor, codes: Tensor, decode: Callable[[Tensor], Tensor]
) -> Comparison:
    with torch.no_grad():
        mine, theirs = ours.encode(x), decode(codes)
        return Comparison(
            library,
            kind,
            float((mine - codes).abs().max()),
            float((ours.decode(codes) - theirs).abs().max()),
            bool(torch.equal(mine != 0, codes != 0)),
            float(codes.abs().max()),
            float(theirs.abs().max()),
        )


def _version(name: str) -> str:
    from importlib.metadata import version

    return f"{name} {version(name)}"


def _saelens(folder: Path, x: Tensor) -> Iterator[Comparison]:
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    library = _version("sae-lens")
    saes = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "topk, rescale_acts_by_decoder_norm, no b_dec on the input": TopKSAE(
            TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=False)
        ),
        "jumprelu, thresholds of either sign, no b_dec on the input": JumpReLUSAE(
            JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
        ),
        "batchtopk (saved for inference as jumprelu)": BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)
        ),
    }
    for seed, (kind, sae) in enumerate(saes.items()):
        _randomise(sae, seed)
        if isinstance(sae, BatchTopKTrainingSAE):
            sae.topk_threshold.fill_(8.0)
            sae.save_inference_model(folder / f"saelens-{seed}")
            sae = SAE.load_from_disk(folder / f"saelens-{seed}")  # its inference codes, not one batch's TopK
        else:
            sae.save_model(folder / f"saelens-{seed}")
        ours = SparseAutoencoder.load(folder / f"saelens-{seed}")
        with torch.no_grad():
            yield _compare(library, kind, ours, x, sae.encode(x), sae.decode)
    for activation, k in (("relu", None), ("topk", K), ("jumprelu", None), ("batchtopk", K)):
        ours = SparseAutoencoder(D_IN, D_SAE, activation, k=k)
        _randomise(ours, 40)
        if activation in ("jumprelu", "batchtopk"):
            with torch.no_grad():
                ours.code_activation.threshold.abs_().mul_(10)
        ours.save(folder / f"ours-{activation}", layout="saelens")
        theirs = SAE.load_from_disk(folder / f"ours-{activation}")
        with torch.no_grad():
            yield _compare(
                library, f"ours ({activation}) saved, SAELens loaded", ours, x, theirs.encode(x), theirs.decode
            )


def _sparsify(folder: Path, x: Tensor) -> Iterator[Comparison]:
    # sparsify decodes with a Triton kernel whenever triton imports; these tensors are on the CPU
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K))
    _randomise(sae, 10)
    sae.save_to_disk(folder / "sparsify" / "layers.0")
    ours = SparseAutoencoder.load(folder / "sparsify" / "layers.0")
    with torch.no_grad():
        top_acts, top_indices, _ = sae.encode(x)
        codes = torch.zeros(len(x), D_SAE).scatter(-1, top_indices, top_acts)

        def decode(z: Tensor) -> Tensor:
            values, index = z.topk(K, dim=-1)
            return sae.decode(values, index)

        yield _compare(_version("eai-sparsify"), "SparseCoder (TopK)", ours, x, codes, decode)


def _dictionary_learning(folder: Path, x: Tensor) -> Iterator[Comparison]:
    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    library = _version("dictionary-learning")
    saes = {
        "AutoEncoder": AutoEncoder(D_IN, D_SAE),
        "AutoEncoderNew": AutoEncoderNew(D_IN, D_SAE),
        "AutoEncoderTopK": AutoEncoderTopK(D_IN, D_SAE, K),
        "BatchTopKSAE": BatchTopKSAE(D_IN, D_SAE, K),
        "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE(D_IN, D_SAE, K, group_sizes=[64, 128]),
        "JumpReluAutoEncoder": JumpReluAutoEncoder(D_IN, D_SAE),
    }
    for seed, (dict_class, sae) in enumerate(saes.items(), start=20):
        _randomise(sae, seed)
        if "BatchTopK" in dict_class:
            sae.threshold.fill_(8.0)  # a trained threshold keeps about k codes a row
        where = folder / f"dictionary-learning-{dict_class}"
        where.mkdir()
        # as dictionary_learning/training.py writes a trainer's folder: config.json, then the final ae.pt
        trainer = {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE, "lm_name": "none"}
        (where / "config.json").write_text(json.dumps({"trainer": trainer}))
        torch.save({name: t.cpu() for name, t in sae.state_dict().items()}, where / "ae.pt")
        ours = SparseAutoencoder.load(where)
        with torch.no_grad():
            yield _compare(library, dict_class, ours, x, sae.encode(x), sae.decode)


def _overcomplete(folder: Path, x: Tensor) -> Iterator[Comparison]:
    from overcomplete.sae import SAE, JumpSAE, TopKSAE

    library = _version("overcomplete")
    saes = [
        ("SAE", SAE(D_IN, D_SAE), "relu", None),
        ("TopKSAE", TopKSAE(D_IN, D_SAE, top_k=K), "topk", K),
        ("JumpSAE", JumpSAE(D_IN, D_SAE), None, None),  # recognised by its thresholds
    ]
    for seed, (kind, sae, activation, k) in enumerate(saes, start=30):
        _randomise(sae, seed)  # the dictionary's rows far from unit norm, its multiplier ≠ 0
        if kind == "JumpSAE":
            sae.thresholds.data.add_(2.0)  # exp(θ) about 7: a third of the codes kept
        torch.save(sae.state_dict(), folder / f"overcomplete-{kind}.pt")
        ours = SparseAutoencoder.load(folder / f"overcomplete-{kind}.pt", activation=activation, k=k)
        sae.eval()
        with torch.no_grad():
            yield _compare(library, kind, ours, x, sae.encode(x)[1], sae.decode)


LIBRARIES: dict[str, Callable[[Path, Tensor], Iterator[Comparison]]] = {
    "sae_lens": _saelens,
    "sparsify": _sparsify,
    "dictionary_learning": _dictionary_learning,
    "overcomplete": _overcomplete,
}


def compare_all(x: Tensor) -> tuple[list[Comparison], dict[str, str]]:
    """Every library that imports, compared on inputs ``x`` (N, 48).

    Returns:
        (comparisons, skipped): the rows, and each library that did not import with the error.

    Example:
        >>> rows, skipped = compare_all(torch.randn(256, 48))
    """
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name, compare in LIBRARIES.items():
            try:
                rows.extend(compare(Path(folder), x))
            except ImportError as error:
                skipped[name] = f"{type(error).__name__}: {error}"
    return rows, skipped


def main() -> int:
    """Print the table; exit 1 if a library's latents differ from ours."""
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0)) * 2
    rows, skipped = compare_all(x)
    print("| library | SAE | max abs diff of codes | max abs diff of reconstructions | same active latents |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row.row())
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    return 0 if all(row.same_active for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
