"""One model's run: its output folder, its stage files, and what the stages share, computed once."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from captum_salve.activations import ActivationSet, collect_activations
from captum_salve.analysis import ClassProfile, class_profile, select_feature
from captum_salve.files import atomic_path, ensure_directory
from captum_salve.models import default_cam_layer, find_head, get_module, model_device, module_name
from captum_salve.pipeline.config import PipelineConfig
from captum_salve.pipeline.fingerprint import data_fingerprint, model_fingerprint, tensor_fingerprint
from captum_salve.pipeline.inputs import CueProbe, PipelineInputs
from captum_salve.pipeline.record import Record, RecordFormatError, to_plain
from captum_salve.sae import VARIANTS, SAEConfig, SparseAutoencoder, code_activation, train_saes
from captum_salve.sae.train import CHECKPOINT_FILE, checkpoint_folder
from captum_salve.store import MANIFEST_FILE, ActivationStore, write_activations

__all__ = ["STAGE_FORMAT", "Run"]

# Version of the stage files; a file of another version is refused, not misread.
STAGE_FORMAT = 4
# What config.json records of the inputs, by hash: a rerun on other weights or images is refused.
_FINGERPRINTS = ("model weights", "training data", "training activations", "test data", "test masks", "cue probe")

R = TypeVar("R", bound=Record)


class Run:
    """One model's pipeline run in its output folder.

    The folder holds ``config.json`` (the settings and what the run is about),
    ``activations/``, one folder per trained SAE (``sae-<variant>[-seed<s>]/``, with
    its epoch checkpoints in ``<folder>.training/`` while it trains),
    ``stages/<stage>.json`` (and ``stages/<stage>/`` with the finished pieces of a
    stage in progress, see :meth:`part`) and ``figures/``. What several stages need (activations, the SAE, its class
    profile, each class's feature) is a property computed on first use and loaded
    from its file when a previous run left one.

    Args:
        inputs: The model and data.
        out: The run's folder (created).
        config: The settings; a folder written with other settings is refused.

    Raises:
        ValueError: The model's head has another number of outputs than there are
            class names; a Grad-FAM layer is not in the model (or none is known for
            its family); ``to_display`` does not give (N, 3, H, W) images; a class
            has no training or test images; or ``out`` holds a run with other
            settings, classes or Grad-FAM layers, of other model weights or other
            data (compared by hash, see :mod:`~captum_salve.pipeline.fingerprint`),
            or one written by another version of captum_salve.

    Example:
        >>> run = Run(digits_inputs("resnet18"), "salve-report/digits-resnet18", PipelineConfig())
        >>> run.features          # each class's feature, chosen on the training activations
    """

    def __init__(self, inputs: PipelineInputs, out: str | Path, config: PipelineConfig) -> None:
        self.inputs, self.config = inputs, config
        self.out = ensure_directory(out)
        self.model = inputs.model
        self.device = model_device(self.model)
        outputs = find_head(self.model)[1].out_features
        if outputs != len(self.class_names):
            raise ValueError(
                f"the model's head has {outputs} outputs but {len(self.class_names)} class names were given "
                f"({self.class_names[:6]}); the pipeline analyses one named class per output"
            )
        shown = inputs.to_display(self.images([0]))
        if not isinstance(shown, Tensor) or shown.dim() != 4 or shown.shape[:2] != (1, 3):
            raise ValueError(
                "PipelineInputs to_display must turn (N, C, H, W) model inputs into (N, 3, H, W) images in [0, 1]; "
                f"on one test image it gave {tuple(shown.shape) if isinstance(shown, Tensor) else shown!r}"
            )
        for layer in self.cam_layers:  # an unknown family or a misspelt layer is named now, not after training
            get_module(self.model, layer)
        for split, data in (("train", inputs.train), ("test", inputs.test)):
            labels = _dataset_labels(data)
            if labels is not None:  # known without reading an image: checked before anything is written
                self._check_labels(labels, split)
        self._saes: dict[tuple[str, int], SparseAutoencoder] = {}
        self._record_settings()

    @property
    def class_names(self) -> list[str]:
        """The class names, in label order."""
        return self.inputs.class_names

    def _record_settings(self) -> None:
        """Write ``config.json``, or check that the one there describes this run."""
        record = {
            "format": STAGE_FORMAT,
            "config": self.config.to_json(),
            "class_names": list(self.class_names),
            "cam_layers": list(self.inputs.cam_layers),
            "model weights": model_fingerprint(self.model),
            "training data": data_fingerprint(self.inputs.train),
            "training activations": _store_fingerprint(self.inputs.train_activations),
            "test data": data_fingerprint(self.inputs.test),
            "test masks": tensor_fingerprint(self.inputs.masks),
            "cue probe": _probe_fingerprint(self.inputs.probe),
        }
        path = self.out / "config.json"
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(record, indent=2))
            return
        before = _read_json(path)
        if before.get("format") != STAGE_FORMAT:
            raise ValueError(_other_version(path, f"format {before.get('format')}, this version reads {STAGE_FORMAT}"))
        changed = [
            f"{key} {before['config'].get(key)} → {value}"
            for key, value in record["config"].items()
            if before["config"].get(key) != value
        ]
        changed += [
            f"{key} {before.get(key)} → {record[key]}"
            for key in ("class_names", "cam_layers")
            if before.get(key) != record[key]
        ]
        changed += [f"other {key}" for key in _FINGERPRINTS if before.get(key) != record[key]]
        if changed:
            raise ValueError(
                f"{str(self.out)!r} holds a run made with other settings ({'; '.join(changed)}); "
                "use another output folder, or delete this one to start over"
            )

    def stage(self, name: str, kind: type[R], compute: Callable[[Run], R]) -> R:
        """The result of stage ``name``: read from ``stages/<name>.json``, or computed and written there.

        The pieces a long stage kept with :meth:`part` are removed once its file is written.
        """
        result = _stored(self.out / "stages" / f"{name}.json", name, kind, lambda: compute(self))
        shutil.rmtree(self.out / "stages" / name, ignore_errors=True)
        return result

    def part(self, stage: str, key: str, kind: type[R], compute: Callable[[], R]) -> R:
        """One finished piece of a long stage (a class, a layer), kept in ``stages/<stage>/<key>.json``.

        A stage interrupted part-way starts again after its last finished piece
        instead of from its beginning.

        Example:
            >>> figures = [run.part("validate", f"class{k}", ClassFigures, lambda: draw(k)) for k in classes]
        """
        return _stored(self.out / "stages" / stage / f"{key}.json", f"{stage}/{key}", kind, compute)

    def figure(self, fig: Figure, name: str) -> str:
        """Save ``fig`` as ``figures/<name>.png``; returns that path relative to the run folder."""
        relative = f"figures/{name}.png"
        with atomic_path(self.out / relative) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        return relative

    @cached_property
    def train_acts(self) -> ActivationStore:
        """Head-input activations of the training images, on disk (the SAEs and the edits are fitted on these).

        ``inputs.train_activations`` when given; otherwise written to ``activations/train/``
        by :func:`~captum_salve.store.write_activations`, which resumes a stopped write.
        """
        store = self.inputs.train_activations
        if store is None:
            store = write_activations(
                self.model, self.inputs.train, self.out / "activations" / "train", batch_size=self.config.batch_size,
                progress=False,
            )  # fmt: skip
        self._check_labels(store.labels, "train")
        known = _dataset_labels(self.inputs.train)
        if known is not None and not torch.equal(known.long(), store.labels):
            raise ValueError(
                "the training activations' labels differ from the training images' labels: the store was not "
                "written from these images in this order"
            )
        return store

    @cached_property
    def test_acts(self) -> ActivationSet:
        """Head-input activations of the test images (every reported number is measured on these)."""
        path = self.out / "activations" / "test.safetensors"
        if path.is_file():
            return ActivationSet.load(path)
        acts = collect_activations(self.model, self.inputs.test, batch_size=self.config.batch_size, progress=False)
        self._check_labels(acts.labels, "test")
        acts.save(path)
        return acts

    def _check_labels(self, labels: Tensor | None, split: str) -> None:
        """Every class needs images in both sets: a class without test images cannot be measured."""
        names = self.class_names
        if (
            labels is None
            or labels.dtype.is_floating_point
            or labels.dtype == torch.bool
            or len(labels) == 0
            or labels.min() < 0
            or labels.max() >= len(names)
        ):
            shown = labels[:6].tolist() if labels is not None else None
            raise ValueError(
                f"the {split} data must be labelled with integer class indices in [0, {len(names) - 1}], "
                f"got {shown} ..."
            )
        counts = torch.bincount(labels.long(), minlength=len(names))
        empty = [names[k] for k in range(len(names)) if counts[k] == 0]
        if empty:
            raise ValueError(
                f"classes {empty[:6]} have no {split} images ({len(empty)} of {len(names)} classes); "
                "every class needs training and test images"
            )

    def sae_of(self, activation: str, seed: int = 0) -> SparseAutoencoder:
        """The run's SAE of one variant and seed (see :meth:`saes_of`)."""
        return self.saes_of([(activation, seed)])[0]

    def saes_of(self, keys: Sequence[tuple[str, int]]) -> list[SparseAutoencoder]:
        """The run's SAEs of these (variant, seed) pairs; those not yet trained are trained in one pass.

        Each is kept in ``sae-<activation>[-seed<seed>]/``. The missing ones are trained
        together by :func:`~captum_salve.sae.train_saes`, all reading the rows in the order of
        data-order seed 0 (so the seeds of the seed study differ in their initialisation only,
        and each equals ``train_sae(..., seed=seed, shuffle_seed=0)`` alone), with a checkpoint
        after every epoch in ``<its folder>.training/``: a run interrupted during training
        resumes from its last finished epoch.
        """
        missing = []
        for activation, seed in dict.fromkeys(keys):
            directory = self.out / (f"sae-{activation}" if seed == 0 else f"sae-{activation}-seed{seed}")
            if (activation, seed) in self._saes:
                continue
            if (directory / "cfg.json").is_file():
                self._saes[activation, seed] = SparseAutoencoder.load(directory, device=self.device)
            else:
                missing.append((activation, seed, directory))
        if missing:
            configs = []
            for activation, seed, _ in missing:
                settings = VARIANTS[activation].default_settings(self.config.sae_latents)
                if "k" in settings and self.config.topk is not None:
                    settings["k"] = self.config.topk
                configs.append(SAEConfig(self.config.sae_latents, code_activation(activation, **settings), seed=seed))
            checkpoints = [checkpoint_folder(directory) for *_, directory in missing]
            results = train_saes(
                self.train_acts,
                configs,
                epochs=self.config.sae_epochs,
                shuffle_seed=0,
                device=self.device,
                checkpoint_dirs=checkpoints,
                resume=any((folder / CHECKPOINT_FILE).is_file() for folder in checkpoints),
                progress=False,
            )
            for (activation, seed, directory), (sae, history) in zip(missing, results, strict=True):
                sae.metadata.update(run=self.inputs.name, final_epoch=to_plain(history[-1]))
                sae.save(directory)
                self._saes[activation, seed] = sae
            for checkpoint in checkpoints:  # only once every SAE is saved: a rerun resumes all or none
                shutil.rmtree(checkpoint)
        return [self._saes[key] for key in keys]

    @property
    def sae(self) -> SparseAutoencoder:
        """The SAE the analysis uses (``config.sae_activation``)."""
        return self.sae_of(self.config.sae_activation)

    @cached_property
    def profile(self) -> ClassProfile:
        """Class profile μ of :attr:`sae` on the training activations."""
        return class_profile(self.sae, self.train_acts, class_names=self.class_names)

    @cached_property
    def features(self) -> list[int]:
        """Each class's feature: the top of its profile by contrast."""
        return [select_feature(self.profile, k)[0] for k in range(len(self.class_names))]

    @cached_property
    def cam_layers(self) -> list[str]:
        """Grad-FAM layers: the inputs' own, else the model family's default."""
        if self.inputs.cam_layers:
            return list(self.inputs.cam_layers)
        return [module_name(self.model, default_cam_layer(self.model))]

    @cached_property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model's inputs, as the test data gives them."""
        return tuple(self.images([0]).shape[-2:])

    def images(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Test images at ``indices``, stacked (on the CPU)."""
        return torch.stack([self.inputs.test[int(i)][0] for i in indices])


def _dataset_labels(data: Dataset) -> Tensor | None:
    """A dataset's labels when it holds them (ImageFolder, TensorDataset, the digits canvas, their Subsets)."""
    if isinstance(data, Subset):
        labels = _dataset_labels(data.dataset)
        return labels[torch.as_tensor(list(data.indices), dtype=torch.long)] if labels is not None else None
    if isinstance(data, TensorDataset) and len(data.tensors) > 1:
        labels = data.tensors[1]
    else:
        labels = getattr(data, "targets", getattr(data, "labels", None))
    if isinstance(labels, (list, Tensor)) and len(labels) == len(data):
        return torch.as_tensor(labels)
    return None


def _probe_fingerprint(probe: CueProbe | None) -> str | None:
    """A probe by the hashes of its images and masks, and its name; None without one."""
    if probe is None:
        return None
    parts = [tensor_fingerprint(t) for t in (probe.with_cue, probe.without_cue, probe.masks)]
    return hashlib.sha256("\0".join([probe.name, *map(str, parts)]).encode()).hexdigest()[:16]


def _store_fingerprint(store: ActivationStore | None) -> str | None:
    """A given store by the hash of its manifest (its shards, rows and their sums); None when the run writes its own."""
    if store is None:
        return None
    if store.path.is_dir():
        described = (store.path / MANIFEST_FILE).read_bytes()
    else:  # an ActivationSet file: its name and size (hashing gigabytes would cost a pass over them)
        described = f"{store.path.name}:{store.path.stat().st_size}".encode()
    return hashlib.sha256(described).hexdigest()[:16]


def _stored(path: Path, name: str, kind: type[R], compute: Callable[[], R]) -> R:
    """The record in ``path``, or ``compute()`` written there (atomically) and returned."""
    if path.is_file():
        stored = _read_json(path)
        if stored.get("format") != STAGE_FORMAT or "result" not in stored:
            raise ValueError(_other_version(path, "it has no result of this version's format"))
        try:
            return kind.from_json(stored["result"])
        except RecordFormatError as error:
            raise ValueError(_other_version(path, str(error))) from None
    result = compute()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": STAGE_FORMAT, "stage": name, "result": result.to_json()}, indent=2))
    return result


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(_other_version(path, f"it is not JSON ({error})")) from None
    if not isinstance(value, dict):
        raise ValueError(_other_version(path, "it is not a JSON object"))
    return value


def _other_version(path: Path, reason: str) -> str:
    folder = next((p for p in path.parents if (p / "config.json").is_file()), path.parent)
    return (
        f"{str(path)!r} was not written by this version of captum_salve ({reason}); "
        f"delete it, or the whole run folder {str(folder)!r}, to compute it again"
    )
