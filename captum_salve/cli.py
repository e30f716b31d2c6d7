"""The ``captum-salve`` command: ``demo``, ``run``, ``collect``, ``train`` and ``edit``.

``collect`` and ``train`` also run under ``torchrun`` (one process per GPU, or
several CPU processes with gloo): ``collect`` splits the images across the
processes and writes one store; ``train`` is data-parallel over each batch.

Mistakes a user can make (a folder with no images, an unknown model, a checkpoint
that does not fit, an ``--out`` that is a file) end with one ``error:`` line and
exit status 2; earlier outputs in ``--out`` are left as they were. An error from
inside a library that is not one of these checks is reported as an internal
error, with exit status 1, never as the user's mistake.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

import torch
from safetensors.torch import save_file
from timm.utils import ParseKwargs
from torch.utils.data import DataLoader, Dataset, Subset, random_split

from captum_salve.activations import iter_batches
from captum_salve.checks import raised_in
from captum_salve.data import class_folders, cue_probe_folder, folder_masks, image_folder, imagenet_classes
from captum_salve.distributed import ProcessGroup, launched
from captum_salve.edit import DEFAULT_RULE, MODES, RULES, edit_model
from captum_salve.files import atomic_path, ensure_directory
from captum_salve.models import (
    DATA_CONFIG_KEYS,
    INTERPOLATIONS,
    check_data_config,
    create_model,
    describe_input_config,
    find_head,
    input_config,
    input_normalization,
    keep_classes,
    set_input_config,
)
from captum_salve.pipeline import (
    DIGITS_CAM_LAYERS,
    CueProbe,
    PipelineConfig,
    PipelineInputs,
    PipelineSummary,
    digits_inputs,
    run_pipeline,
)
from captum_salve.pipeline.discover import near_chance
from captum_salve.report import read_summaries, write_report
from captum_salve.sae import VARIANTS, SAEConfig, SparseAutoencoder, code_activation, train_saes
from captum_salve.sae.train import CHECKPOINT_FILE, checkpoint_folder
from captum_salve.sites import as_device
from captum_salve.store import ActivationStore, write_activations
from captum_salve.zoo import digits_classifier

__all__ = ["main"]

# Errors raised from this package's own files are its checks of what the user gave; any other is internal.
_PACKAGE = Path(__file__).resolve().parent

# The seed of a model `run` builds without --pretrained or --checkpoint, so a resumed run analyses the same model.
RANDOM_MODEL_SEED = 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``captum-salve`` console script; returns the exit status.

    Example:
        >>> main(["demo", "--model", "vit", "--seeds", "3", "--out", "salve-report"])
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as error:
        origin = raised_in(error) or _PACKAGE
        if isinstance(error, OSError) or origin.is_relative_to(_PACKAGE):  # our checks, or the system's refusal
            print(f"captum-salve: error: {error}", file=sys.stderr)
            return 2
        print(
            f"captum-salve: internal error, not a mistake in your command: {type(error).__name__} from "
            f"{origin.name}: {error}; please report it with the command you ran",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("captum-salve: interrupted; finished stages are kept in --out and reused next time", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the command reported in one line that points to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="captum-salve", description="SALVE for Captum and timm: discover, validate and edit SAE features."
    )
    commands = parser.add_subparsers(required=True, metavar="command")

    demo = commands.add_parser("demo", help="run the whole pipeline on the embedded digits canvas and write a report")
    demo.add_argument("--out", default="salve-report", help="report folder (default: salve-report)")
    demo.add_argument("--model", choices=(*DIGITS_CAM_LAYERS, "both"), default="both")
    _common(demo)
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="run the pipeline on your timm / torchvision model and an ImageFolder tree")
    _model_flags(run)
    run.add_argument(
        "--data",
        type=Path,
        required=True,
        help="ImageFolder tree (root/<class>/<image>); Imagenette's train/ works as is",
    )
    run.add_argument("--val-data", type=Path, help="held-out ImageFolder tree (default: 20%% of --data)")
    run.add_argument(
        "--store",
        type=Path,
        help="head-input activations of --data written by `captum-salve collect` (read instead of recomputed; "
        "needs --val-data, since all of --data is then the training set)",
    )
    run.add_argument(
        "--masks",
        type=Path,
        help="object masks of the test images for the pointing game: a tree like the test images' "
        "(<masks>/<class>/<name>.png, non-zero inside the object)",
    )
    run.add_argument(
        "--probe",
        type=Path,
        help="paired images of a cue you suspect the model relies on: <probe>/with_cue/... and <probe>/without_cue/... "
        "(same file names), optionally <probe>/cue_masks/...; adds a 'suspected shortcuts' section to the report",
    )
    run.add_argument("--sae-latents", type=int, default=256)
    run.add_argument("--out", default="salve-report")
    _common(run)
    run.set_defaults(handler=_run)

    collect = commands.add_parser(
        "collect", help="write a model's activations over an ImageFolder tree to an on-disk store (torchrun-ready)"
    )
    _model_flags(collect)
    collect.add_argument("--data", type=Path, required=True, help="ImageFolder tree (root/<class>/<image>)")
    collect.add_argument("--out", type=Path, required=True, help="store folder (a rerun completes a stopped one)")
    collect.add_argument("--site", help='where to read, e.g. "layer3:spatial_mean" (default: the head input)')
    collect.add_argument("--tokens", choices=("cls", "all"), default="cls", help="all: every token is a row")
    collect.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    collect.add_argument("--shard-rows", type=int, default=65536)
    collect.add_argument("--batch-size", type=int, default=64)
    collect.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    collect.add_argument("--device", default=None, help="cpu, cuda ... (under torchrun: each rank's own GPU)")
    collect.add_argument("--quiet", action="store_true")
    collect.set_defaults(handler=_collect)

    train = commands.add_parser("train", help="train SAEs on a store (several seeds in one pass; torchrun-ready)")
    train.add_argument("--store", type=Path, required=True, help="store folder written by collect")
    train.add_argument("--out", type=Path, required=True, help="SAE folder (with several seeds: one per seed inside)")
    train.add_argument("--latents", type=int, default=256)
    train.add_argument("--activation", choices=tuple(VARIANTS), default="relu")
    train.add_argument("--k", type=int, help="features kept per input (topk, batchtopk, matryoshka, archetypal)")
    train.add_argument(
        "--aux-k", type=int, help="dead latents in the AuxK loss (the TopK family; default 0: resampling only)"
    )
    train.add_argument("--l1", type=float, help="sparsity strength (an L0 weight for jumprelu); default the variant's")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--batch-size", type=int, default=256, help="rows per step over all processes")
    train.add_argument("--seed", type=int, nargs="+", default=[0], help="one SAE per seed, all in one data pass")
    train.add_argument("--shuffle", choices=("exact", "blocks"), default="exact")
    train.add_argument("--shuffle-seed", type=int, default=0, help="seed of the data order, shared by all --seed")
    train.add_argument("--block-rows", type=int, default=4096)
    train.add_argument("--buffer-blocks", type=int, default=64)
    train.add_argument("--micro-batches", type=int, default=1)
    train.add_argument("--checkpoint-every", type=int, help="also checkpoint every this many steps")
    train.add_argument("--device", default=None, help="cpu, cuda ... (under torchrun: each rank's own GPU)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(handler=_train)

    edit = commands.add_parser("edit", help="write a model's edited weights as safetensors")
    edit.add_argument(
        "--model", required=True, help='timm name, "torchvision/<name>", or "digits/resnet18" / "digits/vit"'
    )
    edit_weights = edit.add_mutually_exclusive_group()
    edit_weights.add_argument("--pretrained", action="store_true")
    edit_weights.add_argument("--checkpoint", type=Path)
    edit.add_argument("--num-classes", type=int)
    _model_kwargs_flag(edit)
    edit.add_argument("--sae", type=Path, required=True, help="SAE folder (cfg.json + model.safetensors)")
    edit.add_argument("--feature", type=int, nargs="+", required=True)
    edit.add_argument("--alpha", type=float, nargs="+", required=True, help="one strength, or one per feature")
    edit.add_argument("--mode", choices=MODES, default="suppress")
    edit.add_argument("--rule", choices=tuple(RULES), default=DEFAULT_RULE, help="edit rule (default %(default)s)")
    edit.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    edit.set_defaults(handler=_edit)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument(
        "--seeds", type=int, default=10, help="SAE initialisations in the robustness study (default 10, as the paper)"
    )
    parser.add_argument(
        "--rule",
        choices=tuple(RULES),
        default=DEFAULT_RULE,
        help="edit rule of the control stage (default %(default)s)",
    )
    parser.add_argument(
        "--sae-activation",
        choices=tuple(VARIANTS),
        default=PipelineConfig.sae_activation,
        help="SAE variant the analysis uses (default %(default)s; the paper's linear SAE is always trained too)",
    )
    parser.add_argument(
        "--sae-epochs", type=int, default=PipelineConfig.sae_epochs, help="SAE training epochs (default %(default)s)"
    )
    parser.add_argument(
        "--maximization-steps",
        type=int,
        default=PipelineConfig.maximization_steps,
        help="activation-maximisation steps (default %(default)s)",
    )
    parser.add_argument(
        "--faithfulness-images",
        type=int,
        default=PipelineConfig.faithfulness_images,
        help="test images scored by the pointing game and deletion curves (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help='timm name (e.g. resnet18, vit_base_patch16_224) or "torchvision/<name>"'
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained",
        action="store_true",
        help="load the library's pretrained weights (needs internet or a cache); an ImageNet head keeps the rows of "
        "folders named by WordNet id, as Imagenette's are",
    )
    weights.add_argument("--checkpoint", type=Path, help="state_dict file (.safetensors or .pth) to load")
    parser.add_argument("--num-classes", type=int, help="head size (default: the number of class folders)")
    _model_kwargs_flag(parser)
    config = parser.add_argument_group(
        "data config",
        "how images are prepared for the model, as timm's scripts name it; each flag overrides the config saved "
        "inside or beside --checkpoint (timm's args.yaml or config.json), which overrides the model's pretrained_cfg",
    )
    config.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="e.g. 3 64 64")
    config.add_argument("--mean", type=float, nargs="+", help="per channel, or one for all")
    config.add_argument("--std", type=float, nargs="+", help="per channel, or one for all")
    config.add_argument("--interpolation", choices=INTERPOLATIONS)
    config.add_argument("--crop-pct", type=float, help="share of the resized image kept by the centre crop (1: none)")


def _model_kwargs_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default={},
        action=_KeyValues,
        metavar="KEY=VALUE",
        help="architecture arguments for create_model, as in timm's scripts (e.g. img_size=64 depth=6)",
    )


class _KeyValues(ParseKwargs):
    """timm's ``--model-kwargs`` parser, with an entry that is not ``key=value`` reported as a usage error."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        bad = [value for value in values if value and "=" not in value]
        if bad:
            parser.error(f"{option_string} takes KEY=VALUE entries, got {bad[0]!r}")
        super().__call__(parser, namespace, values, option_string)


_DATA_CONFIG_FLAGS = {
    "input_size": "--input-size",
    "mean": "--mean",
    "std": "--std",
    "interpolation": "--interpolation",
    "crop_pct": "--crop-pct",
}


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return as_device(name, "--device")


def _config(args: argparse.Namespace, **settings: object) -> PipelineConfig:
    """The run's settings from the flags, checked before anything is loaded or written."""
    try:
        return PipelineConfig(
            seeds=args.seeds,
            rule=args.rule,
            sae_activation=args.sae_activation,
            sae_epochs=args.sae_epochs,
            maximization_steps=args.maximization_steps,
            faithfulness_images=args.faithfulness_images,
            **settings,
        )
    except ValueError as error:  # name the flag, not the field
        message = str(error)
        for field in fields(PipelineConfig):
            message = message.replace(f"PipelineConfig {field.name} ", f"--{field.name.replace('_', '-')} ")
        raise ValueError(message) from None


def _demo(args: argparse.Namespace) -> int:
    device, config = _device(args.device), _config(args)
    out = ensure_directory(args.out)
    start = time.perf_counter()
    archs = tuple(DIGITS_CAM_LAYERS) if args.model == "both" else (args.model,)
    summaries = []
    for arch in archs:
        inputs = digits_inputs(arch, device=device, progress=not args.quiet)
        summaries.append(run_pipeline(inputs, out / inputs.name, config, progress=not args.quiet))
    report = write_report(summaries, out, title="captum_salve demo: the digits canvas")
    print(f"report: {report}  ({time.perf_counter() - start:.0f} s)")
    for summary in summaries:
        count = summary.suppression_goal
        left_out = f"; left out, below it before any edit: {', '.join(count.left_out)}" if count.left_out else ""
        print(
            f"{summary.name}: accuracy {summary.discover.accuracy:.3f}; suppression goal ({count.goal}) met for "
            f"{count.met}/{count.measured} classes (rule {summary.control.rule}), {count.paper_rule_met} with the "
            f"paper's rule{left_out}"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    device, config = _device(args.device), _config(args, sae_latents=args.sae_latents)
    out = ensure_directory(args.out)
    classes = class_folders(args.data)
    model = _user_model(args, classes).to(device).eval()
    data_config = describe_input_config(model)
    print(f"data config: {data_config}")
    train = image_folder(args.data, model)
    store = None
    if args.store is not None:
        if args.val_data is None:
            raise ValueError("--store holds activations of all of --data, so pass --val-data for the test images")
        store = ActivationStore.open(args.store)
    if args.val_data is not None:
        test = image_folder(args.val_data, model)
        if test.classes != classes:
            raise ValueError(
                f"--val-data {str(args.val_data)!r} has the class folders {test.classes[:6]}, --data has "
                f"{classes[:6]}: both need the same folders, or a class would be scored as another"
            )
    else:
        held_out = max(1, len(train) // 5)
        train, test = random_split(train, [len(train) - held_out, held_out], generator=torch.Generator().manual_seed(0))
    masks = folder_masks(test, args.masks, model) if args.masks is not None else None
    probe = None
    if args.probe is not None:
        probe = CueProbe(*cue_probe_folder(args.probe, model), name=f"the cue of {args.probe.name}/")
    trained = args.pretrained or args.checkpoint is not None
    accuracy_line = _accuracy_check(model, test, len(classes), device, warn=trained)
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in input_normalization(model))
    inputs = PipelineInputs(
        name=args.model.replace("/", "-"),
        model=model,
        train=train,
        test=test,
        class_names=classes,
        to_display=lambda x: (x.cpu() * std + mean).clamp(0, 1),
        description={
            "model": args.model,
            "weights": "pretrained"
            if args.pretrained
            else str(args.checkpoint or f"random (seed {RANDOM_MODEL_SEED})"),
            **({"model arguments": args.model_kwargs} if args.model_kwargs else {}),
            "data": str(args.data),
            "data config": data_config,
            **({"masks": str(args.masks)} if masks is not None else {}),
            **({"probe": str(args.probe)} if probe is not None else {}),
            "accuracy check": accuracy_line,
            **({"training activations": str(args.store)} if store is not None else {}),
        },
        train_activations=store,
        masks=masks,
        probe=probe,
    )
    summary = run_pipeline(inputs, out / inputs.name, config, progress=not args.quiet)
    summaries = [*_earlier_models(out, summary.name), summary]
    title = f"captum_salve: {args.model}" if len(summaries) == 1 else "captum_salve"
    print(f"report: {write_report(summaries, out, title=title)}")
    return 0


# Test images the accuracy check reads before the run: enough to tell a working model from chance.
ACCURACY_CHECK_IMAGES = 512


def _accuracy_check(model: torch.nn.Module, test: Dataset, classes: int, device: torch.device, *, warn: bool) -> str:
    """The model's accuracy on (a seeded sample of) the test images, printed; ``warn``: also say when it is near chance.

    (A model with random weights is near chance by construction: it gets no warning.)
    """
    count = min(len(test), ACCURACY_CHECK_IMAGES)
    sample = Subset(test, torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:count].tolist())
    correct = 0
    with torch.no_grad():
        for images, labels in iter_batches(DataLoader(sample, batch_size=64), 64):
            correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
    accuracy = correct / count
    line = f"{accuracy:.1%} on {count} test images (chance {1 / classes:.1%})"
    print(f"accuracy check: {line}")
    if warn and near_chance(accuracy, classes):
        warning = (
            "near chance: the images are most likely prepared otherwise than the model was trained with; "
            "check the data config above (--input-size, --mean, --std, --interpolation, --crop-pct) and the "
            "class folders' order, or the analysis describes a model that does not work on this data"
        )
        print(f"captum-salve: warning: accuracy {line} is {warning}", file=sys.stderr)
        line = f"{line}: {warning}"
    return line


def _user_model(args: argparse.Namespace, classes: list[str]) -> torch.nn.Module:
    """The model --model, --pretrained / --checkpoint and --num-classes name, for the data's class folders."""
    if args.num_classes is not None and args.num_classes < len(classes):
        raise ValueError(
            f"--num-classes {args.num_classes} is smaller than the {len(classes)} class folders in {str(args.data)!r}"
        )
    if args.pretrained and args.num_classes is None:
        model = _pretrained_for(args.model, classes, args.model_kwargs)
    else:
        with torch.random.fork_rng():  # weights not loaded from a file are drawn the same way on every (re)run
            torch.manual_seed(RANDOM_MODEL_SEED)
            model = create_model(
                args.model,
                pretrained=args.pretrained,
                checkpoint_path=args.checkpoint,
                num_classes=args.num_classes or len(classes),
                model_kwargs=args.model_kwargs,
            )
    given = {key: getattr(args, key) for key in _DATA_CONFIG_FLAGS if getattr(args, key) is not None}
    checked = check_data_config(given, labels=_DATA_CONFIG_FLAGS)
    return set_input_config(model, [(_DATA_CONFIG_FLAGS[key], {key: value}) for key, value in checked.items()])


def _earlier_models(out: Path, name: str) -> list[PipelineSummary]:
    """The other models' summaries already in ``out``, so a new model's report keeps their sections."""
    path = out / "summary.json"
    if not path.is_file():
        return []
    try:
        earlier = read_summaries(path)
    except ValueError as error:
        note = f"captum-salve: note: {str(path)!r} could not be read ({error}); its models are left out"
        print(note, file=sys.stderr)
        return []
    return [s for s in earlier if s.name != name and (out / s.name).is_dir()]


def _pretrained_for(name: str, classes: list[str], model_kwargs: dict) -> torch.nn.Module:
    """A pretrained model whose head keeps its trained rows for the data's class folders.

    A new head sized to the folders would be random; ImageNet-1k weights classify
    folders named by WordNet id (Imagenette's layout) with their own rows instead.
    """
    model = create_model(name, pretrained=True, model_kwargs=model_kwargs)
    rows = find_head(model)[1].out_features
    if rows == len(classes):
        return model
    if rows != 1000:
        raise ValueError(
            f"the pretrained head of {name} has {rows} classes and --data has {len(classes)} folders; "
            "pass --checkpoint with weights fine-tuned on these classes"
        )
    try:
        return keep_classes(model, imagenet_classes(classes))
    except ValueError as error:
        raise ValueError(
            f"{error}: --pretrained keeps the ImageNet head, so pass --checkpoint with weights fine-tuned on these "
            "classes, "
            "or --num-classes to analyse a new, untrained head"
        ) from None


def _collect(args: argparse.Namespace) -> int:
    with launched(args.device) as device:
        model = _user_model(args, class_folders(args.data)).to(device).eval()
        data = DataLoader(image_folder(args.data, model), batch_size=args.batch_size, num_workers=args.workers)
        store = write_activations(
            model,
            data,
            args.out,
            args.site,
            tokens=args.tokens,
            dtype=getattr(torch, args.dtype),
            shard_rows=args.shard_rows,
            progress=not args.quiet and ProcessGroup().rank == 0,
        )
        if ProcessGroup().rank == 0:
            print(f"store: {store.path} ({len(store)} rows of width {store.dim}, site {store.site})")
    return 0


def _train(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    variant = code_activation(args.activation, k=args.k, aux_k=args.aux_k)
    configs = [SAEConfig(args.latents, variant, l1=args.l1, lr=args.lr, seed=seed) for seed in args.seed]
    folders = [args.out] if len(configs) == 1 else [args.out / f"seed{seed}" for seed in args.seed]
    checkpoints = [checkpoint_folder(folder) for folder in folders]
    with launched(args.device) as device:
        results = train_saes(
            store,
            configs,
            epochs=args.epochs,
            batch_size=args.batch_size,
            shuffle=args.shuffle,
            shuffle_seed=args.shuffle_seed,
            block_rows=args.block_rows,
            buffer_blocks=args.buffer_blocks,
            micro_batches=args.micro_batches,
            device=device,
            progress=not args.quiet,
            checkpoint_dirs=checkpoints,
            checkpoint_every=args.checkpoint_every,
            resume=any((folder / CHECKPOINT_FILE).is_file() for folder in checkpoints),  # a missing one is named
        )
        if ProcessGroup().rank == 0:
            for (sae, history), folder in zip(results, folders, strict=True):
                sae.save(folder)
                final = history[-1]
                print(
                    f"SAE: {folder} (explained variance {final['explained_variance']:.3f}, "
                    f"L0 {final['l0']:.1f}, dead {final['dead_fraction']:.1%})"
                )
            for checkpoint in checkpoints:  # only once every SAE is saved: a rerun resumes all or none
                shutil.rmtree(checkpoint)
    return 0


def _edit(args: argparse.Namespace) -> int:
    if args.out.exists() and args.out.is_dir():
        raise IsADirectoryError(f"--out {str(args.out)!r} is a directory; give a .safetensors file name")
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out {str(args.out)!r} must end in .safetensors, the format of the edited weights")
    if args.model.startswith("digits/"):
        model = digits_classifier(args.model.split("/", 1)[1], device="cpu", progress=False).model
    else:
        model = create_model(
            args.model,
            pretrained=args.pretrained,
            checkpoint_path=args.checkpoint,
            num_classes=args.num_classes,
            model_kwargs=args.model_kwargs,
        )
    sae = SparseAutoencoder.load(args.sae)
    alpha = args.alpha[0] if len(args.alpha) == 1 else args.alpha
    edited_model = edit_model(model, sae, args.feature, alpha, mode=args.mode, rule=args.rule, inplace=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in edited_model.state_dict().items()}
    with atomic_path(args.out) as tmp:
        save_file(
            state,
            str(tmp),
            metadata={
                "edit": f"{args.mode} features {args.feature} alpha {args.alpha} rule {args.rule}",
                # the data config travels with the weights: create_model reads it back from here
                "pretrained_cfg": json.dumps({k: v for k, v in input_config(model).items() if k in DATA_CONFIG_KEYS}),
            },
        )
    print(f"edited weights: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
