"""ActivationStore and write_activations: the same rows as in memory, atomic shards, resuming, ranks."""

from __future__ import annotations

import json
import os
import pickle
import resource
import tempfile

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from captum_salve import ActivationSet, ActivationStore, collect_activations, store as store_module, write_activations
from captum_salve.store import MANIFEST_FILE, as_rows
from tests.helpers import small_timm_vit


@pytest.fixture
def images():
    return torch.rand(23, 3, 32, 32), torch.arange(23) % 4


def test_rows_equal_collect_activations_when_shards_hold_whole_batches(timm_resnet, images, tmp_path):
    x, y = images
    store = write_activations(
        timm_resnet, TensorDataset(x, y), tmp_path / "s", shard_rows=8, batch_size=4, progress=False
    )
    expected = collect_activations(timm_resnet, TensorDataset(x, y), batch_size=4, progress=False)
    assert len(store) == 23 and len(store.shard_files) == 3 and store.dim == 512
    assert torch.equal(store.block(0, 23), expected.features)
    assert torch.equal(store.labels, expected.labels)
    assert torch.equal(store.image_index, torch.arange(23)) and not store.token_index.any()
    assert (store.site, store.model) == ("head_input", expected.model)
    written = store.written_statistics
    torch.testing.assert_close(written.mean, expected.features.double().mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(written.sum_of_squares, expected.features.double().pow(2).sum(0), rtol=1e-12, atol=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 36), max_size=40), st.integers(1, 40), st.integers(0, 37), st.integers(0, 37))
def test_gathers_blocks_and_chunks_equal_indexing_in_memory(index, shard_rows, start, stop):
    features = torch.randn(37, 5)
    acts = ActivationSet(features, torch.arange(37) % 3)
    with tempfile.TemporaryDirectory() as folder:
        store = ActivationStore.from_set(acts, f"{folder}/s", shard_rows=shard_rows)
        assert torch.equal(store.rows(torch.tensor(index, dtype=torch.long)), features[index])
        assert torch.equal(store.block(start, stop), features[start:stop])
        for world_size in (1, 3):
            pieces = [c for rank in range(world_size) for c in store.chunks(7, rank=rank, world_size=world_size)]
            assert torch.equal(torch.cat([c.features for c in pieces]), features)
            assert torch.equal(torch.cat([c.labels for c in pieces]), acts.labels)
        assert torch.equal(store.statistics().sum, as_rows(acts).statistics().sum)


def test_a_store_pickles_as_its_paths(tmp_path):
    small = ActivationStore.from_set(ActivationSet(torch.randn(10, 8)), tmp_path / "small")
    large = ActivationStore.from_set(ActivationSet(torch.randn(5000, 8)), tmp_path / "large", shard_rows=1000)
    large.rows(torch.arange(10))  # maps the shards: they must not travel with the pickle
    assert len(pickle.dumps(large)) < len(pickle.dumps(small)) + 1000
    again = pickle.loads(pickle.dumps(large))
    assert torch.equal(again.rows(torch.tensor([4999, 3])), large.rows(torch.tensor([4999, 3])))


def test_an_activation_set_file_opens_as_a_one_shard_store(tmp_path):
    acts = ActivationSet(torch.randn(9, 4), torch.arange(9) % 2, "layer3:spatial_mean", "resnet18")
    acts.save(tmp_path / "acts.safetensors")
    store = ActivationStore.open(tmp_path / "acts.safetensors")
    assert (len(store), store.dim, store.site, store.model) == (9, 4, "layer3:spatial_mean", "resnet18")
    assert torch.equal(store.rows(torch.tensor([8, 0])), acts.features[[8, 0]])
    assert torch.equal(store.labels, acts.labels)


def test_every_token_of_a_vit_block_becomes_a_row(tmp_path):
    model, x = small_timm_vit(), torch.rand(5, 3, 32, 32)
    store = write_activations(model, x, tmp_path / "t", "blocks.1", tokens="all", shard_rows=40, progress=False)
    with torch.no_grad():
        tokens = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))  # (5, 17, 32)
    assert len(store) == 5 * 17 and store.site == "blocks.1:all_tokens" and store.images == 5
    torch.testing.assert_close(store.block(0, len(store)), tokens.reshape(-1, 32))
    assert torch.equal(store.image_index, torch.arange(5).repeat_interleave(17))
    assert torch.equal(store.token_index, torch.arange(17).repeat(5))


def test_bfloat16_rows_are_read_back_as_float32(timm_resnet, images, tmp_path):
    x, _ = images
    full = write_activations(timm_resnet, x, tmp_path / "f", shard_rows=8, batch_size=4, progress=False)
    half = write_activations(
        timm_resnet, x, tmp_path / "h", shard_rows=8, batch_size=4, dtype=torch.bfloat16, progress=False
    )
    assert half.dtype == torch.bfloat16 and half.block(0, 3).dtype == torch.float32
    assert torch.equal(half.block(0, 23), full.block(0, 23).bfloat16().float())
    assert half.labels is None


def test_a_killed_writer_leaves_the_committed_shards_and_a_rerun_completes_them(
    timm_resnet, images, tmp_path, monkeypatch
):
    x, y = images
    data = TensorDataset(x, y)
    whole = write_activations(timm_resnet, data, tmp_path / "whole", shard_rows=8, batch_size=4, progress=False)
    real, written = store_module._write_shard, []

    def crash_on_the_second(path, *args):
        if written:
            raise KeyboardInterrupt
        real(path, *args)
        written.append(path)

    monkeypatch.setattr(store_module, "_write_shard", crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        write_activations(timm_resnet, data, tmp_path / "s", shard_rows=8, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"is incomplete \(1 shards, 8 rows written\): its writer stopped"):
        ActivationStore.open(tmp_path / "s")
    partial = ActivationStore.open(tmp_path / "s", allow_incomplete=True)
    assert len(partial) == 8 and torch.equal(partial.block(0, 8), whole.block(0, 8))
    assert not json.loads((tmp_path / "s" / MANIFEST_FILE).read_text())["complete"]
    assert not list((tmp_path / "s").glob("*.partial"))

    left_by_a_kill = tmp_path / "s" / ".shard-00001.safetensors.x1y2.partial"
    left_by_a_kill.write_bytes(b"half a shard")
    monkeypatch.setattr(store_module, "_write_shard", real)
    calls = []
    monkeypatch.setattr(store_module, "_write_shard", lambda path, *args: calls.append(path) or real(path, *args))
    resumed = write_activations(timm_resnet, data, tmp_path / "s", shard_rows=8, batch_size=4, progress=False)
    assert [p.name for p in calls] == ["shard-00001.safetensors", "shard-00002.safetensors"]
    assert torch.equal(resumed.block(0, 23), whole.block(0, 23)) and torch.equal(resumed.labels, whole.labels)
    assert resumed.written_statistics.count == 23
    assert not left_by_a_kill.exists()


def test_resuming_refuses_other_settings_and_a_fresh_start_refuses_an_existing_store(timm_resnet, images, tmp_path):
    x, _ = images
    write_activations(timm_resnet, x, tmp_path / "s", shard_rows=8, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(images_per_shard: store 8 vs now 4\)"):
        write_activations(timm_resnet, x, tmp_path / "s", shard_rows=4, progress=False)
    with pytest.raises(FileExistsError, match="already holds a store; pass resume=True"):
        write_activations(timm_resnet, x, tmp_path / "s", shard_rows=8, resume=False, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty folder without a store manifest"):
        write_activations(timm_resnet, x, tmp_path / "other", progress=False)


def test_two_ranks_write_the_store_one_rank_writes(timm_resnet, images, tmp_path):
    x, y = images
    data = DataLoader(TensorDataset(x, y), batch_size=4)
    one = write_activations(timm_resnet, data, tmp_path / "one", shard_rows=6, progress=False)
    for rank in (0, 1, 0):  # in turn, as torchrun's barriers would order them; rank 0 then lists all shards
        two = write_activations(
            timm_resnet, data, tmp_path / "two", shard_rows=6, rank=rank, world_size=2, progress=False
        )
    for shard_one, shard_two in zip(one.shard_files, two.shard_files, strict=True):
        assert shard_one.read_bytes() == shard_two.read_bytes()
    assert (tmp_path / "one" / MANIFEST_FILE).read_text() == (tmp_path / "two" / MANIFEST_FILE).read_text()


def test_bad_arguments_are_named(timm_resnet, images, tmp_path):
    x, y = images
    shuffled = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    for kwargs, error, message in [
        (dict(data=shuffled), ValueError, "does not read its dataset in order"),
        (dict(tokens="some"), ValueError, "tokens must be 'cls'"),
        (dict(tokens="all"), ValueError, "tokens='all' needs site to name a module"),
        (dict(dtype=torch.int8), ValueError, "dtype must be one of torch.float32"),
        (dict(shard_rows=0), ValueError, "shard_rows must be an integer >= 1"),
        (dict(rank=2, world_size=2), ValueError, r"rank must be below world_size \(2\)"),
        (dict(data=x[:0]), ValueError, "data is empty"),
        (dict(data=[x]), TypeError, "data must be an image tensor, a Dataset or a DataLoader"),
    ]:
        call = dict(data=x) | kwargs
        with pytest.raises(error, match=message):
            write_activations(timm_resnet, call.pop("data"), tmp_path / "s", progress=False, **call)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="is not an activation store"):
        ActivationStore.open(tmp_path)
    store = ActivationStore.from_set(ActivationSet(torch.randn(4, 2)), tmp_path / "s")
    with pytest.raises(IndexError, match="out of range for a store of 4 rows"):
        store.rows(torch.tensor([4]))
    with pytest.raises(ValueError, match="these activations carry no labels"):
        store.require_labels()


@settings(max_examples=20, deadline=None)
@given(st.floats(-1e6, 1e6), st.integers(2, 300), st.integers(1, 97))
def test_statistics_stay_exact_far_from_the_origin(offset, n, chunk_rows):
    rows = torch.randn(n, 3, dtype=torch.float64).float() + offset
    stats = as_rows(rows).statistics(chunk_rows)
    exact = rows.double()
    torch.testing.assert_close(stats.mean, exact.mean(0), rtol=1e-12, atol=1e-9)
    expected = (exact - exact.mean(0)).pow(2).sum(1).mean()
    assert abs(stats.total_variance - float(expected)) <= 1e-9 * max(1.0, float(expected))


def test_a_data_loader_keeps_its_batch_size(timm_resnet, images, tmp_path):
    x, y = images
    sizes = []
    timm_resnet.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    store = write_activations(timm_resnet, loader, tmp_path / "s", shard_rows=8, batch_size=64, progress=False)
    assert sizes[1:] == [7, 1, 7, 1, 7]  # after the one-image probe: each 8-image shard in batches of 7
    assert torch.equal(store.labels, y[:23])


def test_a_store_of_many_shards_keeps_few_files_open(tmp_path):
    features = torch.randn(150, 3)
    store = ActivationStore.from_set(ActivationSet(features), tmp_path / "s", shard_rows=1)
    used = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 100, hard))  # fewer than the 150 shards
    try:
        index = torch.randperm(150)
        assert torch.equal(store.rows(index), features[index])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        store.close()


def test_statistics_of_no_rows_are_refused():
    with pytest.raises(ValueError, match="there are no rows to take statistics of"):
        as_rows(torch.zeros(0, 3)).statistics()
