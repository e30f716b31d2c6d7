"""The user's preprocessing and architecture: data config and model arguments from model, checkpoint and caller.

Precedence, lowest first: the architecture's ``pretrained_cfg``; the config saved inside
the checkpoint (timm training args, a ``pretrained_cfg`` entry or safetensors metadata)
or beside it (timm's ``config.json``, ``args.yaml``); the caller's ``data_config`` or flags.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from captum_salve.data import cue_probe_folder, folder_masks, image_folder
from captum_salve.models import (
    DATA_CONFIG_KEYS,
    SOURCES_KEY,
    create_model,
    describe_input_config,
    input_config,
    saved_config,
    set_input_config,
)
from captum_salve.pipeline.discover import near_chance
from captum_salve.sae import SparseAutoencoder
from tests.helpers import assert_one_line_error, image_tree
from tests.test_cli import cli

RESNET = "test_resnet"
VIT = "vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
TRAINED_AT = {"input_size": (3, 48, 48), "mean": (0.5, 0.4, 0.3), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0}


def _config(model: torch.nn.Module) -> dict:
    return {key: input_config(model)[key] for key in TRAINED_AT}


def test_a_timm_training_checkpoint_gives_its_data_config_and_model_arguments(tmp_path):
    """train.py's checkpoint keeps an argparse.Namespace of its settings: read with weights_only, nothing unpickled."""
    trained = create_model(VIT, num_classes=3, model_kwargs=VIT_ARGS)
    args = argparse.Namespace(
        model=VIT, img_size=None, input_size=[3, 32, 32], mean=[0.5, 0.4, 0.3], std=[0.25], interpolation="",
        crop_pct=1.0, crop_mode=None, model_kwargs=VIT_ARGS, lr=0.1,
    )  # fmt: skip
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": VIT, "state_dict": trained.state_dict(), "args": args}, path)

    model = create_model(VIT, checkpoint_path=path)  # no model arguments given: the saved ones build it

    assert model.patch_embed.img_size == (32, 32) and len(model.blocks) == 2 and model.head.out_features == 3
    assert torch.equal(model.head.weight, trained.head.weight)
    config = input_config(model)
    assert config["input_size"] == (3, 32, 32) and config["mean"] == (0.5, 0.4, 0.3)
    assert config["std"] == (0.25, 0.25, 0.25) and config["crop_pct"] == 1.0
    assert config["interpolation"] == "bicubic"  # "" in the args means "not set": the model's own stays
    assert "from the training args saved in" in describe_input_config(model)


def test_config_beside_the_checkpoint_timm_hub_layout_and_train_args(tmp_path):
    state = create_model(RESNET, num_classes=3).state_dict()
    hub, train = tmp_path / "hub", tmp_path / "train"
    hub.mkdir(), train.mkdir()
    save_file(state, str(hub / "model.safetensors"))
    pretrained_cfg = {"input_size": [3, 48, 48], "mean": [0.5, 0.4, 0.3], "std": [0.25] * 3, "crop_pct": 1.0}
    (hub / "config.json").write_text(json.dumps({"architecture": RESNET, "pretrained_cfg": pretrained_cfg}))
    torch.save(state, train / "checkpoint-9.pth.tar")
    args = {"model": RESNET, "img_size": 48, "input_size": None, "mean": [0.5, 0.4, 0.3], "std": [0.25], "crop_pct": 1}
    (train / "args.yaml").write_text(yaml.safe_dump(args))

    for path in (hub / "model.safetensors", train / "checkpoint-9.pth.tar"):
        model = create_model(RESNET, checkpoint_path=path)
        assert _config(model) == TRAINED_AT, path
        assert saved_config(path).source == str(path.parent / ("config.json" if path.parent == hub else "args.yaml"))


def test_precedence_model_then_checkpoint_then_caller(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(create_model(RESNET, num_classes=3).state_dict(), path)
    (tmp_path / "args.yaml").write_text(yaml.safe_dump({"input_size": [3, 48, 48], "mean": [0.1, 0.2, 0.3]}))

    model = create_model(RESNET, checkpoint_path=path, data_config={"mean": [0.5], "interpolation": "bilinear"})

    config, plain = input_config(model), input_config(create_model(RESNET))
    assert config["input_size"] == (3, 48, 48)  # the checkpoint's, over the architecture's 160
    assert config["mean"] == (0.5, 0.5, 0.5) and config["interpolation"] == "bilinear"  # the caller's, over both
    assert config["std"] == plain["std"] and config["crop_pct"] == plain["crop_pct"]  # nobody set them
    assert model.pretrained_cfg[SOURCES_KEY] == {
        "input_size": str(tmp_path / "args.yaml"),
        "mean": "data_config",
        "interpolation": "data_config",
    }
    text = describe_input_config(model)
    assert text.startswith("3×48×48, bilinear, crop_pct") and "the rest from the model's pretrained_cfg" in text


def test_a_bare_state_dict_says_nothing_and_the_model_keeps_its_config(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(create_model(RESNET, num_classes=3).state_dict(), str(path))
    assert saved_config(path).source is None
    assert input_config(create_model(RESNET, checkpoint_path=path)) == input_config(create_model(RESNET))


def test_images_are_prepared_with_the_resolved_config(tmp_path):
    """The ImageFolder transform against PIL and numpy by hand: resize, crop 1.0, then the given mean and std."""
    data = image_tree(tmp_path / "data", per_class=1)
    model = create_model(RESNET, num_classes=3, data_config={**TRAINED_AT, "interpolation": "bilinear"})
    image, _ = image_folder(data, model)[0]
    with Image.open(sorted((data / "n00").iterdir())[0]) as file:
        pixels = np.asarray(file.convert("RGB").resize((48, 48), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(TRAINED_AT["mean"]).view(3, 1, 1)) / 0.25
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "data_config, message",
    [
        ({"size": 64}, "unknown entries ['size']"),
        ({"input_size": (64, 64)}, "input_size must be (channels, height, width)"),
        ({"std": [0.5, 0.0, 0.5]}, "std must be one or one per channel of positive numbers"),
        ({"mean": [0.5, 0.5]}, "mean from data_config has 2 values for 3 channels"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"crop_pct": 1.5}, "crop_pct must be a number in (0, 1]"),
        ({"input_size": (1, 64, 64)}, "has 1 channels but the model's first convolution takes 3"),
    ],
)
def test_a_bad_data_config_is_named(data_config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        create_model(RESNET, data_config=data_config)


def test_model_arguments_build_the_architecture_and_a_checkpoint_names_them(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(create_model(VIT, num_classes=3, model_kwargs=VIT_ARGS).state_dict(), str(path))
    model = create_model(VIT, checkpoint_path=path, model_kwargs=VIT_ARGS)
    assert input_config(model)["input_size"] == (3, 32, 32)  # from the patch embedding, not the 224 of the cfg
    with pytest.raises(ValueError, match=r"does not fit VisionTransformer built with the model arguments \{'depth'"):
        create_model(VIT, checkpoint_path=path, model_kwargs={"depth": 3})
    with pytest.raises(ValueError, match="check the model name, num_classes and the model arguments"):
        create_model(VIT, checkpoint_path=path)
    with pytest.raises(ValueError, match=r"cannot be built with the model arguments \{'wings': 2\}"):
        create_model(RESNET, model_kwargs={"wings": 2})
    with pytest.raises(ValueError, match="patch embedding takes 32×32 images"):
        create_model(VIT, model_kwargs=VIT_ARGS, data_config={"input_size": (3, 64, 64)})


def test_collect_reads_the_images_as_the_flags_say_over_the_checkpoints_config(capsys, tmp_path):
    data = image_tree(tmp_path / "data", per_class=2)
    weights = tmp_path / "weights"
    weights.mkdir()
    model = create_model(RESNET, num_classes=3).eval()
    torch.save(model.state_dict(), weights / "model.pth")
    (weights / "args.yaml").write_text(yaml.safe_dump({"input_size": [3, 48, 48], "mean": [0.2], "std": [0.3]}))
    argv = ["collect", "--model", RESNET, "--checkpoint", weights / "model.pth", "--data", data, "--quiet"]
    argv += ["--device", "cpu"]  # compared with a CPU forward below; a GPU's TF32 convolutions round differently
    code, _, err = cli(capsys, *argv, "--mean", "0.5", "--crop-pct", "1", "--out", tmp_path / "store")
    assert code == 0, err

    expected_model = set_input_config(model, [("here", {"input_size": (3, 48, 48), "mean": (0.5,), "std": (0.3,),
                                                        "crop_pct": 1.0})])  # fmt: skip
    images = torch.stack([image for image, _ in image_folder(data, expected_model)])
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images.float()), pre_logits=True)
    stored = load_file(str(tmp_path / "store" / "shard-00000.safetensors"))["features"]
    torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-5)


def test_flags_that_do_not_fit_are_one_line_errors(capsys, tmp_path):
    data = image_tree(tmp_path / "data", per_class=1)
    argv = ["collect", "--model", RESNET, "--data", data, "--out", tmp_path / "store"]
    code, _, err = cli(capsys, *argv, "--std", "0.5", "0.5")
    assert_one_line_error(code, err, "std from --std has 2 values for 3 channels")
    code, _, err = cli(capsys, *argv, "--std", "0.5", "0", "1")
    assert_one_line_error(code, err, "--std must be one or one per channel of positive numbers, got [0.5, 0.0, 1.0]")
    code, _, err = cli(capsys, *argv, "--crop-pct", "2")
    assert_one_line_error(code, err, "--crop-pct must be a number in (0, 1]")
    with pytest.raises(SystemExit) as usage_error:  # a malformed flag is argparse's usage error
        cli(capsys, *argv, "--model-kwargs", "depth")
    assert usage_error.value.code == 2
    assert "--model-kwargs takes KEY=VALUE entries, got 'depth'" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_edit_keeps_the_data_config_with_the_weights(capsys, tmp_path):
    sae_dir = tmp_path / "sae"
    SparseAutoencoder(create_model(RESNET).num_features, 12, activation="linear").save(sae_dir)
    path = tmp_path / "model.safetensors"
    save_file(create_model(RESNET, num_classes=3).state_dict(), str(path))
    (tmp_path / "args.yaml").write_text(yaml.safe_dump({"input_size": [3, 48, 48], "mean": [0.2, 0.3, 0.4]}))
    out = tmp_path / "edited" / "edited.safetensors"
    out.parent.mkdir()
    argv = ["edit", "--model", RESNET, "--checkpoint", path, "--sae", sae_dir, "--feature", "1", "--alpha", "2"]
    assert cli(capsys, *argv, "--out", out)[0] == 0
    edited = create_model(RESNET, checkpoint_path=out)  # no args.yaml beside it: the file's metadata tells
    assert input_config(edited)["input_size"] == (3, 48, 48) and input_config(edited)["mean"] == (0.2, 0.3, 0.4)
    assert set(saved_config(out).data_config) <= set(DATA_CONFIG_KEYS)


def test_near_chance_is_15_percent_of_the_way_from_chance_to_perfect():
    assert near_chance(0.19, 10) and near_chance(0.234, 10) and not near_chance(0.236, 10)
    assert near_chance(0.57, 2) and not near_chance(0.58, 2)
    assert not near_chance(0.94, 10)


@pytest.mark.slow
def test_run_states_its_data_config_and_warns_when_a_trained_model_is_near_chance(capsys, tmp_path):
    data, val = image_tree(tmp_path / "data", per_class=4), image_tree(tmp_path / "val", per_class=2)
    path = tmp_path / "model.safetensors"
    save_file(create_model(RESNET, num_classes=3).state_dict(), str(path))  # "trained" weights that do not work
    argv = ["run", "--model", RESNET, "--checkpoint", path, "--data", data, "--input-size", "3", "40", "40"]
    argv += ["--quiet", "--seeds", "2", "--sae-latents", "8", "--sae-epochs", "1", "--maximization-steps", "1"]
    _mask_tree(val, tmp_path / "masks")
    _probe_tree(tmp_path / "probe")
    argv += [
        "--faithfulness-images",
        "2",
        "--val-data",
        val,
        "--masks",
        tmp_path / "masks",
        "--probe",
        tmp_path / "probe",
    ]
    code, stdout, err = cli(capsys, *argv, "--out", tmp_path / "out")
    assert code == 0, err
    assert "data config: 3×40×40, bilinear" in stdout and "input_size from --input-size" in stdout
    assert "accuracy check: " in stdout and "on 6 test images (chance 33.3%)" in stdout
    assert "captum-salve: warning: accuracy" in err and "near chance" in err and "--input-size" in err
    report = (tmp_path / "out" / "report.html").read_text()
    assert "input_size from --input-size" in report and "the model is near chance on these images" in report
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())[RESNET]
    layers = summary["faithfulness"]["layers"].values()
    assert all("grad_fam" in layer["pointing_game"] for layer in layers)  # the user's masks were scored
    assert "8. Suspected shortcuts: the cue of probe/" in report and "On 3 pairs" in report
    assert len(summary["shortcuts"]["features"]) == 5 and summary["shortcuts"]["mask_area"]


def _mask_tree(data: Path, masks: Path) -> None:
    """A mask per image of ``data``: a 10×6 box at a place that depends on the file, 0 / 255, as PNG."""
    for index, path in enumerate(sorted(data.rglob("*.JPEG"))):
        pixels = np.zeros((40, 40), dtype=np.uint8)
        pixels[index % 30 : index % 30 + 10, 3 : 3 + 6] = 255
        (masks / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(masks / path.parent.name / f"{path.stem}.png")


def test_user_masks_are_cut_as_the_images_are(tmp_path):
    data, masks = image_tree(tmp_path / "data", per_class=3), tmp_path / "masks"
    _mask_tree(data, masks)
    model = create_model(RESNET, num_classes=3, data_config={"input_size": (3, 48, 48), "crop_pct": 0.8})
    test = image_folder(data, model)
    subset = torch.utils.data.Subset(test, [7, 2, 4])  # random_split's kind of test set, in its own order

    got = folder_masks(subset, masks, model)

    assert got.dtype == torch.bool and got.shape == (3, 48, 48)
    for row, index in enumerate([7, 2, 4]):  # by hand: shorter side to 48 / 0.8 = 60 (nearest), centre 48×48
        path = Path(test.samples[index][0])
        with Image.open(masks / path.parent.name / f"{path.stem}.png") as mask:
            resized = np.asarray(mask.resize((60, 60), Image.Resampling.NEAREST)) > 0
        assert torch.equal(got[row], torch.from_numpy(resized[6:54, 6:54].copy())), index


def test_user_masks_that_are_missing_or_empty_are_named(tmp_path):
    data, masks = image_tree(tmp_path / "data", per_class=2), tmp_path / "masks"
    _mask_tree(data, masks)
    model = create_model(RESNET, num_classes=3)
    test = image_folder(data, model)
    (masks / "n01" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images have no mask in .*masks/n01/1'\.\* for"):
        folder_masks(test, masks, model)
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(masks / "n01" / "1.png")
    with pytest.raises(ValueError, match=r"1 masks mark nothing after the model's resize and crop, e\.g\. .*1\.png"):
        folder_masks(test, masks, model)
    with pytest.raises(FileNotFoundError, match="mask folder .* does not exist"):
        folder_masks(test, tmp_path / "nowhere", model)
    with pytest.raises(ValueError, match="images must be an ImageFolder or a Subset of one, got TensorDataset"):
        folder_masks(torch.utils.data.TensorDataset(torch.zeros(2, 3, 8, 8)), masks, model)


def _probe_tree(root: Path, pairs: int = 3) -> None:
    """Pairs of 40×40 images, the with_cue one with a white 6×6 corner patch, and its masks, in sub-folders."""
    rng = np.random.default_rng(1)
    for i in range(pairs):
        pixels = (rng.random((40, 40, 3)) * 80).astype(np.uint8)
        cued = pixels.copy()
        cued[:6, :6] = 255
        mask = np.zeros((40, 40), dtype=np.uint8)
        mask[:6, :6] = 255
        for folder, array in (("with_cue", cued), ("without_cue", pixels), ("cue_masks", mask)):
            (root / folder / "batch").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / "batch" / f"{i}.png")


def test_a_probe_folder_gives_pairs_prepared_for_the_model_and_their_cue_masks(tmp_path):
    _probe_tree(tmp_path / "probe")
    model = create_model(RESNET, num_classes=3, data_config={"input_size": (3, 40, 40), "crop_pct": 1.0})
    with_cue, without_cue, masks = cue_probe_folder(tmp_path / "probe", model)
    assert with_cue.shape == without_cue.shape == (3, 3, 40, 40) and masks.shape == (3, 40, 40)
    changed = (with_cue != without_cue).any(dim=1)
    assert torch.equal(changed, masks) and masks[:, :6, :6].all() and masks.sum() == 3 * 36
    (tmp_path / "probe" / "without_cue" / "batch" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images have no partner without the cue in"):
        cue_probe_folder(tmp_path / "probe", model)
    with pytest.raises(FileNotFoundError, match="has no with_cue/ folder"):
        cue_probe_folder(tmp_path, model)
