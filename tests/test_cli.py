"""The captum-salve command: one-line errors that keep earlier outputs, the edit command, and a resumable run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from captum_salve import ActivationStore, SparseAutoencoder, edit_model
from captum_salve.cli import main
from captum_salve.models import create_model, find_head
from tests.helpers import assert_one_line_error, image_tree, labelled_clusters

# timm's tiny test networks: a real ResNet and a real ViT, small enough for a CPU test.
SMALL_RESNET = "test_resnet"


def cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def out_with_earlier_result(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.json").write_text('{"kept": true}')
    return out


def earlier_result_intact(out: Path) -> bool:
    return (
        sorted(p.name for p in out.iterdir()) == ["earlier.json"]
        and (out / "earlier.json").read_text() == '{"kept": true}'
    )


def test_run_with_a_folder_holding_no_images(capsys, tmp_path, out_with_earlier_result):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    code, _, err = cli(
        capsys, "run", "--model", SMALL_RESNET, "--data", tmp_path / "data", "--out", out_with_earlier_result
    )
    assert_one_line_error(code, err, "holds no images", "root/<class>/<image>")
    assert earlier_result_intact(out_with_earlier_result)


def test_run_with_a_missing_folder(capsys, tmp_path, out_with_earlier_result):
    code, _, err = cli(
        capsys, "run", "--model", SMALL_RESNET, "--data", tmp_path / "nowhere", "--out", out_with_earlier_result
    )
    assert_one_line_error(code, err, "does not exist")
    assert earlier_result_intact(out_with_earlier_result)


def test_run_with_a_model_timm_does_not_know(capsys, tmp_path, out_with_earlier_result):
    data = image_tree(tmp_path / "data", per_class=1)
    code, _, err = cli(capsys, "run", "--model", "resnet19", "--data", data, "--out", out_with_earlier_result)
    assert_one_line_error(code, err, "timm does not know the model 'resnet19'", "resnet18")
    assert earlier_result_intact(out_with_earlier_result)


def test_run_with_a_checkpoint_that_does_not_fit(capsys, tmp_path, out_with_earlier_result):
    data = image_tree(tmp_path / "data", per_class=1)
    checkpoint = tmp_path / "five_classes.safetensors"
    save_file(create_model(SMALL_RESNET, num_classes=5).state_dict(), str(checkpoint))
    code, _, err = cli(
        capsys,
        "run",
        "--model",
        SMALL_RESNET,
        "--checkpoint",
        checkpoint,
        "--data",
        data,
        "--out",
        out_with_earlier_result,
    )
    assert_one_line_error(code, err, "does not fit", "'fc.weight'", "(5, ", "(3, ")
    assert earlier_result_intact(out_with_earlier_result)


def test_run_with_too_few_classes_for_the_folders(capsys, tmp_path, out_with_earlier_result):
    data = image_tree(tmp_path / "data", per_class=1)
    code, _, err = cli(
        capsys, "run", "--model", SMALL_RESNET, "--num-classes", "2", "--data", data, "--out", out_with_earlier_result
    )
    assert_one_line_error(code, err, "--num-classes 2", "3 class folders")
    assert earlier_result_intact(out_with_earlier_result)


def test_run_with_out_that_is_a_file(capsys, tmp_path):
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "report.txt"
    out.write_text("mine")
    code, _, err = cli(capsys, "run", "--model", SMALL_RESNET, "--data", data, "--out", out)
    assert_one_line_error(code, err, "is a file")
    assert out.read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_a_gpu(capsys, tmp_path):
    data = image_tree(tmp_path / "data", per_class=1)
    code, _, err = cli(
        capsys, "run", "--model", SMALL_RESNET, "--data", data, "--out", tmp_path / "out", "--device", "cuda"
    )
    assert_one_line_error(code, err, "--device cuda", "no GPU")


@pytest.fixture
def saved_sae(tmp_path):
    head = find_head(create_model(SMALL_RESNET))[1]
    sae = SparseAutoencoder(head.in_features, 12, activation="linear")
    sae.save(tmp_path / "sae")
    return sae, tmp_path / "sae"


def test_edit_writes_weights_that_load_into_a_fresh_model(capsys, tmp_path, saved_sae):
    sae, sae_dir = saved_sae
    model = create_model(SMALL_RESNET, num_classes=3)
    checkpoint = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    out = tmp_path / "edited.safetensors"
    argv = ["edit", "--model", SMALL_RESNET, "--checkpoint", checkpoint, "--num-classes", "3", "--sae", sae_dir]
    code, stdout, _ = cli(
        capsys, *argv, "--feature", "2", "7", "--alpha", "1.5", "0.5", "--rule", "salve", "--out", out
    )
    assert code == 0 and str(out) in stdout

    fresh = create_model(SMALL_RESNET, num_classes=3)
    fresh.load_state_dict(load_file(str(out)))
    expected = edit_model(model, sae, [2, 7], [1.5, 0.5], rule="salve")
    assert torch.equal(fresh.fc.weight, expected.fc.weight)
    assert not torch.equal(fresh.fc.weight, model.fc.weight)
    assert torch.equal(fresh.fc.bias, model.fc.bias)


def test_edit_with_no_rule_or_head_size_is_the_python_default_on_the_checkpoints_head(capsys, tmp_path, saved_sae):
    sae, sae_dir = saved_sae
    model = create_model(SMALL_RESNET, num_classes=3)  # not timm's 1000 classes: the size comes from the file
    checkpoint = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    out = tmp_path / "edited.safetensors"
    argv = ["edit", "--model", SMALL_RESNET, "--checkpoint", checkpoint, "--sae", sae_dir, "--feature", "2"]
    code, _, _ = cli(capsys, *argv, "--alpha", "1.5", "--out", out)
    assert code == 0
    expected = edit_model(model, sae, 2, 1.5)
    assert torch.equal(load_file(str(out))["fc.weight"], expected.fc.weight)
    assert torch.equal(load_file(str(out))["fc.bias"], expected.fc.bias)


def test_edit_errors(capsys, tmp_path, saved_sae):
    _, sae_dir = saved_sae
    (tmp_path / "a_folder").mkdir()

    def edit(feature: str, alpha: str, out: Path) -> tuple[int, str, str]:
        argv = ["edit", "--model", SMALL_RESNET, "--sae", sae_dir, "--feature", feature, "--alpha", alpha]
        return cli(capsys, *argv, "--out", out)

    code, _, err = edit("1", "1", tmp_path / "a_folder")
    assert_one_line_error(code, err, "is a directory")
    code, _, err = edit("99", "1", tmp_path / "e.safetensors")
    assert_one_line_error(code, err, "99")
    code, _, err = edit("1", "-1", tmp_path / "e.safetensors")
    assert_one_line_error(code, err, "alpha")
    code, _, err = edit("1", "1", tmp_path / "e.pth")  # torch.load could not read what would be written there
    assert_one_line_error(code, err, "--out", "e.pth' must end in .safetensors")
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "e.pth").exists()


@pytest.mark.slow
def test_run_writes_a_report_resumes_and_refuses_other_settings(capsys, tmp_path):
    data = image_tree(tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        "run",
        "--model",
        SMALL_RESNET,
        "--data",
        data,
        "--out",
        out,
        "--quiet",
        "--sae-latents",
        "16",
        "--sae-epochs",
        "3",
        "--seeds",
        "2",
    ]
    argv += ["--maximization-steps", "4", "--faithfulness-images", "4"]
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    run_dir = out / SMALL_RESNET
    summary = json.loads((out / "summary.json").read_text())[SMALL_RESNET]
    stages = ["discover", "validate", "faithfulness", "control", "alpha_crit", "cross_class", "seeds"]
    assert all((run_dir / "stages" / f"{s}.json").is_file() for s in stages)
    assert [c["class_name"] for c in summary["discover"]["classes"]] == ["n00", "n01", "n02"]
    assert summary["discover"]["train_images"] + summary["discover"]["test_images"] == 24
    assert summary["config"]["sae_latents"] == 16 and summary["seeds"]["seeds"] == 2
    assert all(row["exact_equals_bisect"] for row in summary["alpha_crit"]["classes"])
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 10 and 'src="figures/' not in report

    written = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in written} == written  # every stage, activation and SAE was reused
    resumed = json.loads((out / "summary.json").read_text())[SMALL_RESNET]
    assert {k: resumed[k] for k in stages} == {k: summary[k] for k in stages}

    changed = [a if a != "16" else "32" for a in argv]
    code, _, err = cli(capsys, *changed)
    assert_one_line_error(code, err, "other settings", "sae_latents 16 → 32")
    assert {p: p.stat().st_mtime_ns for p in written} == written


@pytest.mark.slow
def test_run_on_a_collected_store_equals_a_run_that_reads_the_images(capsys, tmp_path):
    data, val = image_tree(tmp_path / "data"), image_tree(tmp_path / "val", per_class=3)
    code, stdout, err = cli(capsys, "collect", "--model", SMALL_RESNET, "--data", data, "--out", tmp_path / "store")
    assert code == 0, err
    assert "24 rows" in stdout
    argv = ["run", "--model", SMALL_RESNET, "--data", data, "--val-data", val, "--quiet", "--seeds", "2"]
    argv += ["--sae-latents", "16", "--sae-epochs", "2", "--maximization-steps", "2", "--faithfulness-images", "3"]
    assert cli(capsys, *argv, "--out", tmp_path / "reads")[0] == 0
    assert cli(capsys, *argv, "--out", tmp_path / "stored", "--store", tmp_path / "store")[0] == 0
    assert not (tmp_path / "stored" / SMALL_RESNET / "activations" / "train").exists()
    reads = json.loads((tmp_path / "reads" / "summary.json").read_text())[SMALL_RESNET]
    stored = json.loads((tmp_path / "stored" / "summary.json").read_text())[SMALL_RESNET]
    for stage in ("discover", "control", "seeds"):
        assert stored[stage] == reads[stage], stage
    untimed = [[{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in run["alpha_crit"]["classes"]]
               for run in (stored, reads)]  # fmt: skip
    assert untimed[0] == untimed[1]


def test_run_with_a_store_needs_held_out_images(capsys, tmp_path):
    data = image_tree(tmp_path / "data", per_class=1)
    code, _, err = cli(capsys, "run", "--model", SMALL_RESNET, "--data", data, "--store", tmp_path, "--out", tmp_path)
    assert_one_line_error(code, err, "--store holds activations of all of --data", "--val-data")


def test_pretrained_imagenet_head_keeps_the_rows_of_imagenette_folders(monkeypatch):
    import captum_salve.cli as cli_module

    downloaded = create_model(SMALL_RESNET, num_classes=1000)  # stands in for weights we cannot download here
    monkeypatch.setattr(cli_module, "create_model", lambda name, **_: copy.deepcopy(downloaded))
    model = cli_module._pretrained_for(SMALL_RESNET, ["n03888257", "n01440764"], {})  # parachute, tench
    assert torch.equal(model.fc.weight, downloaded.fc.weight[[701, 0]])
    assert torch.equal(model.fc.bias, downloaded.fc.bias[[701, 0]])
    with pytest.raises(ValueError, match=r"\['cats'\] are not ImageNet-1k WordNet ids.*--checkpoint"):
        cli_module._pretrained_for(SMALL_RESNET, ["cats", "n01440764"], {})


def test_train_builds_the_named_variant_with_its_settings(tmp_path, capsys):
    acts = labelled_clusters(120, 8, 4, scale=3.0, spread=0.3)[1]
    store = ActivationStore.from_set(acts, tmp_path / "store")
    train = ["train", "--store", str(store.path), "--latents", "16", "--epochs", "1", "--quiet", "--device", "cpu"]
    assert main([*train, "--activation", "topk", "--k", "3", "--aux-k", "5", "--out", str(tmp_path / "sae")]) == 0
    sae = SparseAutoencoder.load(tmp_path / "sae")
    assert sae.code_activation.settings() == {"k": 3, "aux_k": 5, "resample": True}
    assert main([*train, "--activation", "relu", "--aux-k", "5", "--out", str(tmp_path / "bad")]) == 2
    assert "activation 'relu' takes no settings, got ['aux_k']" in capsys.readouterr().err
