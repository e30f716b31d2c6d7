"""torchrun with gloo on the CPU: two processes give what one process gives."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from captum_salve import ActivationSet, ActivationStore, SparseAutoencoder
from captum_salve.cli import main
from captum_salve.sae.train import CHECKPOINT_FILE, train_saes
from tests.distributed_worker import CONFIGS, NAMES, SETTINGS, weights_of
from tests.helpers import REPO, image_tree, labelled_clusters

pytestmark = pytest.mark.slow


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def _relative_difference(first: dict, second: dict) -> float:
    return max(float((first[k] - second[k]).norm() / second[k].norm().clamp_min(1e-12)) for k in first)


def test_two_ranks_collect_the_store_and_train_the_sae_one_process_does(tmp_path):
    data = image_tree(tmp_path / "images", classes=2, per_class=9)
    collect = ["collect", "--model", "resnet18", "--data", str(data), "--shard-rows", "4", "--batch-size", "2"]
    flags = ["--device", "cpu", "--quiet"]
    ran = _torchrun("-m", "captum_salve.cli", *collect, "--out", str(tmp_path / "two"), *flags)
    assert ran.returncode == 0, ran.stderr
    assert main([*collect, "--out", str(tmp_path / "one"), *flags]) == 0
    one, two = ActivationStore.open(tmp_path / "one"), ActivationStore.open(tmp_path / "two")
    assert len(one) == 18 and len(one.shard_files) == 5
    for first, second in zip(one.shard_files, two.shard_files, strict=True):
        assert first.read_bytes() == second.read_bytes()

    train = ["train", "--store", str(tmp_path / "two"), "--latents", "8", "--epochs", "2", "--batch-size", "6"]
    ran = _torchrun("-m", "captum_salve.cli", *train, "--out", str(tmp_path / "sae-two"), *flags)
    assert ran.returncode == 0, ran.stderr
    assert main([*train, "--micro-batches", "2", "--out", str(tmp_path / "sae-one"), *flags]) == 0
    two_ranks = SparseAutoencoder.load(tmp_path / "sae-two").state_dict()
    micro_batches = SparseAutoencoder.load(tmp_path / "sae-one").state_dict()
    assert all(torch.equal(two_ranks[k], micro_batches[k]) for k in two_ranks)
    assert not (tmp_path / "sae-two.training").exists()


def test_ranks_agree_equal_micro_batches_and_resume_after_a_kill(tmp_path):
    acts = labelled_clusters(300, 12, 4, scale=3.0, spread=0.3, offset=2.0)[1]
    store = ActivationStore.from_set(ActivationSet(acts.features, acts.labels), tmp_path / "store", shard_rows=70)
    worker = str(REPO / "tests" / "distributed_worker.py")
    ran = _torchrun(worker, str(store.path), str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    micro_batches = weights_of(train_saes(store, CONFIGS, micro_batches=2, **SETTINGS))
    assert all(torch.equal(rank0[k], v) for k, v in micro_batches.items())
    full_batch = weights_of(train_saes(store, CONFIGS, **SETTINGS))
    for variant, bound in (("relu", 1e-4), ("topk", 1e-6), ("jumprelu", 1e-4)):
        ours = {k: v for k, v in rank0.items() if k.startswith(variant)}
        difference = _relative_difference(ours, {k: full_batch[k] for k in ours})
        print(f"{variant}: two ranks vs one full-batch process, relative L2 difference {difference:.2e}")
        assert difference <= bound

    killed = tmp_path / "killed"
    killed.mkdir()
    assert _torchrun(worker, str(store.path), str(killed), "--crash").returncode != 0
    assert not (killed / "rank0.safetensors").exists()
    assert all((killed / f"{name}.training" / CHECKPOINT_FILE).is_file() for name in NAMES)
    assert _torchrun(worker, str(store.path), str(killed)).returncode == 0
    resumed = load_file(killed / "rank0.safetensors")
    assert all(torch.equal(resumed[k], rank0[k]) for k in rank0)
