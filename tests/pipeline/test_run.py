"""A whole pipeline run on toy two- and three-class models: every stage written, resumed without recompute, guarded."""

from __future__ import annotations

import copy
import json
import pkgutil
import shutil
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from captum_salve import cue_reliance
from captum_salve.attr import GradFAM, mask_mass
from captum_salve.files import folder_lock
from captum_salve.pipeline import STAGES, PipelineSummary, Run, cross_class, run_pipeline, shortcuts
from captum_salve.pipeline.shortcuts import SHORTCUT_FEATURES
from captum_salve.report import write_report
from tests.pipeline.examples import TOY_CONFIG, toy_inputs


def _nudged(model):
    """A copy of the model with one weight changed by a little."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    return other


def _nudged_data(data):
    images, labels = data.tensors
    return TensorDataset(images + 1e-3, labels)


def _one_test_image_fewer(inputs):
    n = len(inputs.test) - 1
    fewer = Subset(inputs.test, range(n))
    return replace(inputs, test=fewer, masks=inputs.masks[:n], planted_cue=inputs.planted_cue[:n])


def _files(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=[2, 3], ids=["2 classes", "3 classes"])
def first_run(request, tmp_path_factory):
    """A toy model handed over in training mode, run once; the forward passes record the mode they saw."""
    classes = request.param
    inputs = toy_inputs(classes)
    inputs.model.train()
    seen = []
    hook = inputs.model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    out = tmp_path_factory.mktemp(f"toy{classes}") / inputs.name
    summary = run_pipeline(inputs, out, TOY_CONFIG, progress=False)
    hook.remove()
    return classes, inputs, out, summary, seen


def test_every_stage_is_written_and_the_model_gets_its_mode_back(first_run):
    classes, inputs, out, summary, seen = first_run
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == sorted(s.name for s in STAGES)
    assert seen and not any(seen)  # every forward pass ran in eval mode
    assert all(m.training for m in inputs.model.modules())  # and the model is back in training mode
    assert len(summary.control.classes) == classes and summary.discover.test_images == 8 * classes
    if classes < 3:
        assert "at least 3 classes" in summary.cross_class.skipped and summary.discover.cross_class == []
    else:
        assert summary.cross_class.skipped is None and len(summary.cross_class.classes) == 2
    html = write_report([summary], out.parent).read_text()
    assert html.count("<h3>") == 8


def test_a_second_run_reads_every_stage_and_recomputes_nothing(first_run):
    _, inputs, out, summary, _ = first_run
    before = _files(out)
    again = run_pipeline(inputs, out, TOY_CONFIG, progress=False)
    assert _files(out) == before  # same files, none rewritten
    assert replace(again, seconds={}) == replace(summary, seconds={})
    assert all(seconds < 1 for seconds in again.seconds.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: (i, replace(TOY_CONFIG, seeds=3)), "seeds 2 → 3"),
        (lambda i: (i, replace(TOY_CONFIG, sweep_alphas=(0.0, 2.0))), "sweep_alphas"),
        (lambda i: (replace(i, class_names=[n.upper() for n in i.class_names]), TOY_CONFIG), "class_names"),
        (lambda i: (replace(i, cam_layers=("blocks.0",)), TOY_CONFIG), "cam_layers"),
        (lambda i: (replace(i, model=_nudged(i.model)), TOY_CONFIG), "other model weights"),
        (lambda i: (replace(i, train=_nudged_data(i.train)), TOY_CONFIG), "other training data"),
        (lambda i: (_one_test_image_fewer(i), TOY_CONFIG), "other test data"),
        (lambda i: (replace(i, masks=~i.masks), TOY_CONFIG), "other test masks"),
        (lambda i: (replace(i, probe=replace(i.probe, name="another cue")), TOY_CONFIG), "other cue probe"),
    ],
    ids=[
        "seeds",
        "alphas",
        "class names",
        "Grad-FAM layers",
        "weights",
        "training images",
        "test images",
        "masks",
        "probe",
    ],  # fmt: skip
)
def test_other_settings_in_the_same_folder_are_refused_and_nothing_changes(first_run, change, message):
    _, inputs, out, _, _ = first_run
    before = _files(out)
    other_inputs, other_config = change(inputs)
    with pytest.raises(ValueError, match=message):
        run_pipeline(other_inputs, out, other_config, progress=False)
    assert _files(out) == before


def test_a_killed_runs_partial_files_are_cleaned_up(first_run):
    _, inputs, out, _, _ = first_run
    partial = out / "stages" / ".control.json.x1y2.partial"
    partial.write_bytes(b"")
    run_pipeline(inputs, out, TOY_CONFIG, progress=False)
    assert not partial.exists()


def test_a_folder_another_run_holds_is_refused(first_run):
    _, inputs, out, _, _ = first_run
    before = _files(out)
    with folder_lock(out), pytest.raises(ValueError, match="another run holds"):
        run_pipeline(inputs, out, TOY_CONFIG, progress=False)
    assert _files(out) == before
    assert run_pipeline(inputs, out, TOY_CONFIG, progress=False).name == inputs.name  # released after the block


def test_a_stage_file_that_no_longer_parses_is_refused_naming_it(first_run, tmp_path):
    _, inputs, out, _, _ = first_run
    path = out / "stages" / "control.json"
    saved = path.read_text()
    stored = json.loads(saved)
    del stored["result"]["classes"][0]["chosen"]["alpha"]
    path.write_text(json.dumps(stored))
    try:
        with pytest.raises(ValueError, match=r"control.json.*ControlResult.classes\[0\].chosen: missing field 'alpha'"):
            run_pipeline(inputs, out, TOY_CONFIG, progress=False)
        path.write_text(json.dumps({"rule": "project", "classes": []}))  # version 0.1 wrote the bare result
        stage = next(s for s in STAGES if s.name == "control")
        with pytest.raises(ValueError, match="control.json.*not written by this version"):
            Run(inputs, out, TOY_CONFIG).stage(stage.name, stage.result, stage.compute)
    finally:
        path.write_text(saved)


def test_a_folder_of_version_0_1_is_refused(tmp_path):
    inputs = toy_inputs(2)
    (tmp_path / "config.json").write_text(json.dumps({"sae_latents": 16}))  # 0.1 wrote the bare settings
    with pytest.raises(ValueError, match="config.json.*not written by this version.*delete it"):
        run_pipeline(inputs, tmp_path, TOY_CONFIG, progress=False)


def test_a_summary_reads_back_from_its_json(first_run):
    *_, summary, _ = first_run
    assert PipelineSummary.from_json(json.loads(json.dumps(summary.to_json()))).to_json() == summary.to_json()


class _Interrupted(Exception):
    pass


def _calls_of(monkeypatch, target, interrupt_at=None):
    """Record the calls of ``target`` (a dotted name), raising on call number ``interrupt_at``; returns the calls."""
    owner_name, attribute = target.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_name)
    real, calls = getattr(owner, attribute), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == interrupt_at:
            raise _Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, wrapper)
    return calls


def _copy_without(out, tmp_path, *removed):
    """A copy of a finished run folder without ``removed`` (relative paths), as if the run had stopped earlier."""
    copy_of = tmp_path / out.name
    shutil.copytree(out, copy_of)
    for path in removed:
        target = copy_of / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return copy_of


def test_an_interrupted_stage_resumes_after_its_last_finished_piece(first_run, tmp_path, monkeypatch):
    _, inputs, out, summary, _ = first_run
    copy_of = _copy_without(out, tmp_path, "stages/validate.json", "stages/faithfulness.json")
    with monkeypatch.context() as patch:  # stopped in the second maximisation, then resumed
        _calls_of(patch, "captum_salve.pipeline.validate._maximize", 2)
        with pytest.raises(_Interrupted):
            run_pipeline(inputs, copy_of, TOY_CONFIG, progress=False)
    kept = sorted(p.name for p in (copy_of / "stages" / "validate").iterdir())
    assert kept == [*(f"class{k}.json" for k in range(len(inputs.class_names))), "maximization-fourier.json"]
    figures = _calls_of(monkeypatch, "captum_salve.pipeline.validate._class_figures")
    maximizations = _calls_of(monkeypatch, "captum_salve.pipeline.validate._maximize")
    again = run_pipeline(inputs, copy_of, TOY_CONFIG, progress=False)
    assert figures == [] and [call[1] for call in maximizations] == ["pixel"]  # only what was left
    assert again.validate == summary.validate and again.faithfulness == summary.faithfulness
    assert not (copy_of / "stages" / "validate").exists()  # the pieces go once the stage is written


def test_sae_training_interrupted_mid_way_resumes_to_the_same_sae(first_run, tmp_path, monkeypatch):
    _, inputs, out, summary, _ = first_run
    seed_sae = f"sae-{TOY_CONFIG.sae_activation}-seed1"
    copy_of = _copy_without(out, tmp_path, "stages/seeds.json", seed_sae)
    with monkeypatch.context() as patch:  # stopped in the second epoch of seed 1's SAE
        _calls_of(patch, "captum_salve.sae.train._DataOrder.reader", 2)
        with pytest.raises(_Interrupted):
            run_pipeline(inputs, copy_of, TOY_CONFIG, progress=False)
    assert (copy_of / f"{seed_sae}.training" / "checkpoint.safetensors").is_file()
    epochs = _calls_of(monkeypatch, "captum_salve.sae.train._DataOrder.reader")
    again = run_pipeline(inputs, copy_of, TOY_CONFIG, progress=False)
    assert len(epochs) == TOY_CONFIG.sae_epochs - 1  # seed 0 was kept; seed 1 resumed after its first epoch
    assert again.seeds == summary.seeds
    assert _files(copy_of / seed_sae).keys() == _files(out / seed_sae).keys()
    for name in ("model.safetensors", "cfg.json"):
        assert (copy_of / seed_sae / name).read_bytes() == (out / seed_sae / name).read_bytes()
    assert not (copy_of / f"{seed_sae}.training").exists()


def test_the_planted_cue_is_measured_on_the_classes_that_carry_it(first_run):
    classes, inputs, out, _, _ = first_run
    if classes < 3:
        pytest.skip("the cross-class stage needs three classes")
    labels = inputs.test.tensors[1]
    cue = (labels == 2) & (torch.arange(len(labels)) % 2 == 0)  # half of class c2's images, no other class's
    run = Run(replace(inputs, planted_cue=cue), out, TOY_CONFIG)
    result = cross_class(run)
    codes = run.sae.encode_all(run.test_acts)[:, result.feature]
    assert result.planted_cue.cue_classes == ["c2"]
    assert result.planted_cue.mean_code_with_cue == pytest.approx(float(codes[cue].mean()))
    assert result.planted_cue.mean_code_without_cue == pytest.approx(float(codes[(labels == 2) & ~cue].mean()))
    nowhere = cross_class(Run(replace(inputs, planted_cue=torch.zeros_like(cue)), out, TOY_CONFIG))
    assert nowhere.planted_cue is None


def test_the_shortcuts_stage_equals_cue_reliance_and_grad_fam_on_the_probe(first_run):
    classes, inputs, out, summary, _ = first_run
    run, probe, result = Run(inputs, out, TOY_CONFIG), inputs.probe, summary.shortcuts
    reliance = cue_reliance(run.model, run.sae, probe.with_cue, probe.without_cue)
    assert [f.feature for f in result.features] == reliance.top(SHORTCUT_FEATURES)
    assert [f.effect for f in result.features] == pytest.approx(reliance.effect[:SHORTCUT_FEATURES].tolist())
    assert result.cue == "a bright corner" and result.pairs == len(probe.with_cue)
    first = result.features[0]
    for layer in run.cam_layers:
        maps = GradFAM(run.model, layer, run.sae).attribute(probe.with_cue, target=first.feature)
        assert first.mask_mass[layer] == pytest.approx(float(mask_mass(maps, probe.masks).nanmean()), rel=1e-6)
        shape = maps.shape[-2:]
        assert result.mask_area[layer] == pytest.approx(float(mask_mass(torch.ones(6, 1, *shape), probe.masks).mean()))
    largest = run.profile.mean_codes.abs().topk(2, dim=0).indices[:, first.feature]
    assert first.classes == [inputs.class_names[int(c)] for c in largest]
    assert (first.cross_class_rank is None) == (classes < 3)
    skipped = shortcuts(Run(replace(inputs, probe=None), out.parent / "without-probe", TOY_CONFIG))
    assert skipped.skipped and skipped.features is None
