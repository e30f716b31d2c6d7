"""The whole pipeline from an on-disk store of many training images, with the peak memory it took.

The training set is the digits canvas drawn again and again with new seeds (new positions,
cues and noise for the same digits), read image by image, so no more than one drawing of
1,348 canvases is in memory at a time. Its head-input activations are written to a store
by :func:`~captum_salve.store.write_activations`, and :func:`~captum_salve.pipeline.run_pipeline`
runs on that store (``PipelineInputs.train_activations``).

Example:
    $ python -m benchmarks.scale_run --images 200000 --out /tmp/scale --json scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from captum_salve.data import DigitsCanvas
from captum_salve.pipeline import DIGITS_CAM_LAYERS, PipelineConfig, digits_inputs, run_pipeline
from captum_salve.store import write_activations


class RedrawnCanvases(Dataset):
    """``images`` training canvases: drawing ``seed`` of the digits canvas holds images ``seed·n … (seed+1)·n − 1``."""

    def __init__(self, images: int) -> None:
        first = DigitsCanvas("train", seed=1)
        self.per_drawing, self.images = len(first), images
        # the digits are the same in every drawing; only where they sit changes
        self.labels = first.labels.repeat(-(-images // self.per_drawing))[:images]
        self._drawing: tuple[int, DigitsCanvas] | None = (0, first)

    def __len__(self) -> int:
        return self.images

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        seed, local = divmod(index, self.per_drawing)
        if self._drawing is None or self._drawing[0] != seed:
            self._drawing = (seed, DigitsCanvas("train", seed=seed + 1))
        return self._drawing[1][local]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    """Write the store, run the pipeline on it, print (and optionally save) the figures; returns them."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_run", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--arch", choices=tuple(DIGITS_CAM_LAYERS), default="resnet18")
    parser.add_argument("--out", type=Path, required=True, help="folder for the store and the run (emptied first)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    figures: dict = {"images": args.images, "arch": args.arch}

    inputs = digits_inputs(args.arch, train=RedrawnCanvases(args.images), device="cpu", progress=False)
    figures["peak MB before the store"] = round(_peak_mb())
    start = time.perf_counter()
    store = write_activations(inputs.model, inputs.train, args.out / "store", batch_size=256, progress=True)
    figures["store seconds"] = round(time.perf_counter() - start, 1)
    figures["store rows x width"] = [len(store), store.dim]
    figures["rows in memory would take MB"] = round(len(store) * store.dim * 4 / 2**20)
    figures["peak MB after the store"] = round(_peak_mb())

    inputs = replace(inputs, train_activations=store)
    start = time.perf_counter()
    summary = run_pipeline(inputs, args.out / "run", PipelineConfig(seeds=args.seeds), progress=True)
    figures["pipeline seconds"] = round(time.perf_counter() - start, 1)
    figures["peak MB after the pipeline"] = round(_peak_mb())
    relu = summary.discover.saes["relu"]
    figures["relu SAE explained variance / L0"] = [round(relu.explained_variance, 3), round(relu.l0, 1)]
    goal = summary.suppression_goal
    figures["classes suppressed (goal met / classes it applies to)"] = [goal.met, goal.measured]
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
