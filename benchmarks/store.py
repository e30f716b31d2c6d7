"""Scale-out (issue 14): rows read from an on-disk ActivationStore against the same rows in memory.

An :class:`~captum_salve.store.ActivationStore` keeps its rows in sharded safetensors
files read through numpy memory maps. The rows here compare, side by side in one run,
a gather of a shuffled batch, a contiguous block read, a training epoch, several SAEs
trained in one pass, and the writer of a store with their in-memory counterparts; one
row measures the peak memory of a streaming class profile in a fresh process, and on a
GPU one row compares a ``torchrun`` worker with a plain process.

"Cold" reads: before the call, every shard file is dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root needed; it drops clean pages that no
process maps, so each call opens the store afresh and the files are ``fsync``'ed after
writing). Whether the drop works is checked with ``mincore`` before timing; where it does
not (a tmpfs, a system without ``posix_fadvise``), the cold gather rows are left out and
the multi-SAE row reads from the cache, and the run says so.

The stores are written to a temporary folder (``TMPDIR``, on a disk for the cold rows)
and removed at the end, also after an error.

The module also runs as a script, for the rows that need a process of their own::

    python -m benchmarks.store profile STORE D_LATENT THREADS   # peak memory of class_profile
    python -m benchmarks.store ddp STORE D_LATENT BATCH THREADS  # one timed training epoch
"""

from __future__ import annotations

import ctypes
import itertools
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.results import Measurement, Row, Settings, Target
from benchmarks.timing import Timings, time_interleaved
from captum_salve.activations import ActivationSet
from captum_salve.store import CHUNK_ROWS, ActivationStore

__all__ = ["run"]

WIDTH = 768  # a ViT-B/16 token: the gathered rows and the profiled store
GATHER_ROWS = 4096
STORE_BYTES = {False: 2_000_000_000, True: 200_000_000}  # full run, quick run
SMALL_STORE_BYTES = 1_000_000_000  # when the temporary folder's disk has less than MIN_FREE_BYTES free
MIN_FREE_BYTES = 6_000_000_000
CLASSES = 10
TRAIN_WIDTH, TRAIN_LATENT, TRAIN_BATCH = 256, 1024, 4096
TRAIN_ROWS = {False: 100_000, True: 20_000}
MULTI_WIDTH, MULTI_LATENT, MULTI_SAES = 2048, 32, 4
MULTI_ROWS = {False: 16_384, True: 4096}
WRITE_IMAGES = {False: 320, True: 128}
WRITE_SIDE, WRITE_BATCH = 64, 64
PROFILE_LATENT = 1024
PROFILE_TARGET_MB = 300.0
DDP_ROWS, DDP_WIDTH, DDP_LATENT, DDP_BATCH = {False: 500_000, True: 100_000}, 768, 4096, 4096


def run(settings: Settings) -> list[Row | Measurement]:
    """Write the temporary stores, measure every scale-out row, and remove the stores.

    Args:
        settings: Device (training rows and the GPU-only ``torchrun`` row) and run length
            (a quick run uses stores of ~200 MB instead of ~2 GB and fewer rounds).

    Returns:
        Rows: store gather / RAM gather, warm and cold; store block / RAM slice, cold;
        store-backed / in-memory training epoch; ``train_saes`` / 4 × ``train_sae``;
        ``write_activations`` / ``collect_activations``; the peak-RSS rise of a streaming
        ``class_profile`` (a :class:`Measurement` in MB); and, on CUDA only, a
        one-process ``torchrun`` epoch / a plain one.
    """
    folder = Path(tempfile.mkdtemp(prefix="captum_salve_bench_"))
    try:
        gathers, profile = _gather_rows(settings, folder)
        rows = [*gathers, _training_row(settings, folder), _multi_row(settings, folder), _write_row(settings, folder)]
        rows.append(profile)
        if settings.device.type == "cuda":
            rows.append(_ddp_row(settings, folder))
        else:
            print("  (skipped the torchrun row: it needs --device cuda)", file=sys.stderr, flush=True)
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- page cache ------------------------------------------------------------------------------------------------------


def _fsync(paths: Sequence[Path]) -> None:
    """Write the files' dirty pages to disk, so that the page cache can drop them."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _drop_from_cache(paths: Sequence[Path]) -> None:
    """Ask the kernel to drop the files' clean, unmapped pages from the page cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _droppable(paths: Sequence[Path]) -> bool:
    """Drop the files from the page cache and say whether that worked (not on a tmpfs, say)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    _drop_from_cache(paths)
    return _resident_fraction(paths) <= 0.01


def _resident_fraction(paths: Sequence[Path]) -> float:
    """The fraction of the files' pages in the page cache (``mincore`` on a fresh, untouched map)."""
    mincore = ctypes.CDLL(None, use_errno=True).mincore
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            view = np.frombuffer(mapped, dtype=np.uint8)
            status = mincore(view.ctypes.data, size, vector)
            del view
        if status != 0:
            raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
        resident += int((np.frombuffer(vector, dtype=np.uint8) & 1).sum())
        total += pages
    return resident / max(total, 1)


class _ColdStore:
    """A store opened afresh, its shard files dropped from the page cache, before every read.

    The previous store object (and with it its memory maps) is released first: the
    kernel does not drop pages that a process still maps.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = ActivationStore.open(path).shard_files
        self.store: ActivationStore | None = None

    def setup(self) -> None:
        self.store = None
        self.store = ActivationStore.open(self.path)
        _drop_from_cache(self.files)

    def failure(self) -> str | None:
        """Why cold reads cannot be timed here (the drop leaves pages in the cache, e.g. on a tmpfs), or None."""
        if not hasattr(os, "posix_fadvise"):
            return "this system has no posix_fadvise"
        if not _droppable(self.files):
            return (
                "the store's pages stay in the page cache after posix_fadvise(DONTNEED) "
                f"(is {self.path.parent} a tmpfs?); set TMPDIR to a folder on a disk"
            )
        return None


# --- gathers and blocks, warm and cold -------------------------------------------------------------------------------


def _store_bytes(settings: Settings, folder: Path) -> int:
    wanted = STORE_BYTES[settings.quick]
    if not settings.quick and shutil.disk_usage(folder).free < MIN_FREE_BYTES:
        print(f"  (less than {MIN_FREE_BYTES / 1e9:.0f} GB free: a 1 GB store)", file=sys.stderr, flush=True)
        return SMALL_STORE_BYTES
    return wanted


def _cycle(items: Sequence) -> Callable[[], object]:
    """A zero-argument call returning the next item, round after round."""
    iterator: Iterator = itertools.cycle(items)
    return lambda: next(iterator)


def _time_cold(
    path: Path, features: torch.Tensor, batches: list[torch.Tensor], starts: list[int], repeats: int
) -> Timings | None:
    """Time gathers and block reads of the store at ``path``, read cold, against ``features`` in RAM.

    Returns None, after saying why on stderr, where the page cache cannot be dropped.
    """
    cold = _ColdStore(path)
    if reason := cold.failure():
        print(f"  (skipped the cold rows: {reason})", file=sys.stderr, flush=True)
        return None
    next_batch, next_start = _cycle(batches), _cycle(starts)
    ram_batch, ram_start = _cycle(batches), _cycle(starts)

    def store_block() -> torch.Tensor:
        start = next_start()
        return cold.store.block(start, start + GATHER_ROWS)

    def ram_block() -> torch.Tensor:
        start = ram_start()
        return features[start : start + GATHER_ROWS].clone()

    cold_timings = time_interleaved(
        {
            "store gather": lambda: cold.store.rows(next_batch()),
            "RAM gather": lambda: features.index_select(0, ram_batch()),
            "store block": store_block,
            "RAM block": ram_block,
        },
        repeats=repeats,
        device=torch.device("cpu"),
        setup={"store gather": cold.setup, "store block": cold.setup},
    )
    cold.store = None
    return cold_timings


def _time_warm(path: Path, features: torch.Tensor, batches: list[torch.Tensor], repeats: int) -> Timings:
    """Time gathers of the store at ``path``, every page mapped and cached, against ``features`` in RAM."""
    warm = ActivationStore.open(path)
    for _ in warm.chunks():  # map and touch every page once
        pass
    next_batch, ram_batch = _cycle(batches), _cycle(batches)
    return time_interleaved(
        {
            "store gather": lambda: warm.rows(next_batch()),
            "RAM gather": lambda: features.index_select(0, ram_batch()),
        },
        repeats=repeats,
        device=torch.device("cpu"),
    )


def _gather_rows(settings: Settings, folder: Path) -> tuple[list[Row], Measurement]:
    """The gather and block rows and the profile row, on one ~2 GB (quick: ~200 MB) store of float32 rows."""
    torch.manual_seed(0)
    n = _store_bytes(settings, folder) // (4 * WIDTH)
    features = torch.randn(n, WIDTH)
    labels = torch.randint(CLASSES, (n,))
    path = folder / "gather"
    started = time.perf_counter()
    store = ActivationStore.from_set(ActivationSet(features, labels), path)
    _fsync(store.shard_files)
    size_gb = sum(f.stat().st_size for f in store.shard_files) / 1e9
    print(f"  wrote a {size_gb:.2f} GB store in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    del store
    repeats = settings.repeats(full=20, quick=5)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randperm(n, generator=generator)[:GATHER_ROWS] for _ in range(repeats + 1)]
    starts = torch.randint(n - GATHER_ROWS, (repeats + 1,), generator=generator).tolist()
    shape = f"{n:,} × {WIDTH} float32 ({size_gb:.1f} GB, {len(ActivationStore.open(path).shard_files)} shards)"

    # Cold first: the warm store keeps every page mapped, and the kernel does not drop mapped pages.
    cold_timings = _time_cold(path, features, batches, starts, repeats)
    warm_timings = _time_warm(path, features, batches, repeats)
    del features
    profile = _profile_row(path, size_gb)
    shutil.rmtree(path)

    batch = f"{GATHER_ROWS} rows of a store of {shape}"
    gathers = [
        Row(
            "Store gather / RAM index_select, warm (pages mapped)",
            "store gather",
            "RAM gather",
            warm_timings,
            Target("at_most", 2.0),
            f"{batch}: store.rows(idx) of a shuffled batch, every page mapped and cached before timing, "
            "against features.index_select(0, idx) of the same rows in memory",
        ),
    ]
    if cold_timings is None:
        return gathers, profile
    gathers += [
        Row(
            "Store gather / RAM index_select, cold (page cache dropped)",
            "store gather",
            "RAM gather",
            cold_timings,
            Target("at_most", 2.0),
            f"{batch}: before each store call (untimed) the store is opened afresh and its shard files "
            "dropped from the page cache (posix_fadvise DONTNEED, checked with mincore), so the rows come from "
            "disk through page faults (each of which reads ahead around it); the reference gathers from memory",
        ),
        Row(
            "Store block / RAM slice, cold (page cache dropped)",
            "store block",
            "RAM block",
            cold_timings,
            Target("at_most", 2.0),
            f"{batch}: store.block(s, s + {GATHER_ROWS}) at a random start s, read cold as above (what "
            "train_saes(shuffle='blocks') reads), against features[s : s + "
            f"{GATHER_ROWS}].clone()",
        ),
    ]
    return gathers, profile


# --- a training epoch ------------------------------------------------------------------------------------------------


def _training_row(settings: Settings, folder: Path) -> Row:
    from captum_salve import train_sae

    torch.manual_seed(0)
    n = TRAIN_ROWS[settings.quick]
    acts = ActivationSet(torch.randn(n, TRAIN_WIDTH))
    store = ActivationStore.from_set(acts, folder / "train")
    options = {"epochs": 1, "batch_size": TRAIN_BATCH, "device": settings.device, "progress": False}
    timings = time_interleaved(
        {
            "store": lambda: train_sae(store, TRAIN_LATENT, **options),
            "memory": lambda: train_sae(acts, TRAIN_LATENT, **options),
        },
        repeats=settings.repeats(full=3, quick=2),
        device=settings.device,
    )
    return Row(
        "train_sae one epoch: from a store / from memory",
        "store",
        "memory",
        timings,
        Target("at_most", 1.2),
        f"{n:,} × {TRAIN_WIDTH} rows, SAE {TRAIN_WIDTH} → {TRAIN_LATENT} (ReLU), batch {TRAIN_BATCH}, "
        "shuffle='exact' (a gather per batch), the store in the page cache; each call also makes its "
        "check_finite and statistics passes over the rows",
    )


# --- several SAEs per pass -------------------------------------------------------------------------------------------


def _multi_row(settings: Settings, folder: Path) -> Row:
    from captum_salve import SAEConfig, train_sae, train_saes

    torch.manual_seed(0)
    n = MULTI_ROWS[settings.quick]
    store = ActivationStore.from_set(ActivationSet(torch.randn(n, MULTI_WIDTH)), folder / "multi", shard_rows=4096)
    files = store.shard_files
    _fsync(files)
    cold = _droppable(files)
    configs = [SAEConfig(MULTI_LATENT, "relu", seed=seed) for seed in range(MULTI_SAES)]
    options = {
        "epochs": 1,
        "batch_size": TRAIN_BATCH,
        "shuffle": "blocks",
        "device": settings.device,
        "progress": False,
    }

    def drop() -> None:
        if cold:
            _drop_from_cache(files)

    def together() -> None:
        drop()
        train_saes(ActivationStore.open(store.path), configs, shuffle_seed=0, **options)

    def one_by_one() -> None:
        for config in configs:
            drop()
            train_sae(ActivationStore.open(store.path), config.d_latent, seed=config.seed, shuffle_seed=0, **options)

    timings = time_interleaved(
        {"train_saes": together, "train_sae × 4": one_by_one},
        repeats=settings.repeats(full=2, quick=2),
        device=settings.device,
        warmup=0,
    )
    reading = (
        "the store is dropped from the page cache before each pass over it (timed, a few ms), so each call "
        "reads it from disk once (its check_finite pass) and then from the cache"
        if cold
        else "the page cache could not be dropped here, so the store is read from the cache"
    )
    return Row(
        f"train_saes({MULTI_SAES} SAEs) / {MULTI_SAES} × train_sae, one epoch, store read "
        + ("cold" if cold else "warm"),
        "train_saes",
        f"train_sae × {MULTI_SAES}",
        timings,
        Target("at_most", 0.5),
        f"{n:,} × {MULTI_WIDTH} rows ({n * MULTI_WIDTH * 4 / 1e6:.0f} MB), {MULTI_SAES} SAEs {MULTI_WIDTH} → "
        f"{MULTI_LATENT} (ReLU, seeds 0-3), batch {TRAIN_BATCH}, shuffle='blocks'; {reading}; no warm-up round",
    )


# --- writing a store -------------------------------------------------------------------------------------------------


def _write_row(settings: Settings, folder: Path) -> Row:
    import timm

    from captum_salve import collect_activations
    from captum_salve.store import write_activations

    torch.manual_seed(0)
    device = settings.device
    model = timm.create_model("resnet18", num_classes=CLASSES).eval().to(device)
    count = WRITE_IMAGES[settings.quick]
    images = torch.randn(count, 3, WRITE_SIDE, WRITE_SIDE)
    outputs = (folder / "written" / str(i) for i in itertools.count())
    options = {"batch_size": WRITE_BATCH, "device": device, "progress": False}
    timings = time_interleaved(
        {
            "write_activations": lambda: write_activations(model, images, next(outputs), **options),
            "collect_activations": lambda: collect_activations(model, images, **options),
        },
        repeats=settings.repeats(full=7, quick=3),
        device=device,
    )
    return Row(
        "write_activations / collect_activations (time; target = images/s ≥ 0.95)",
        "write_activations",
        "collect_activations",
        timings,
        Target("at_most", 1 / 0.95),
        f"timm ResNet-18 (10 classes, random weights), {count} images of 3 × {WRITE_SIDE} × {WRITE_SIDE} "
        f"from a CPU tensor, batch {WRITE_BATCH}, head input (512 wide); write_activations writes a new "
        "one-shard store each call. The ratio is of times, so images/s(write) / images/s(collect) = 1 / ratio "
        "and the target 'images/s ratio ≥ 0.95' is 'time ratio ≤ 1.053'",
    )


# --- peak memory of a streaming class profile ------------------------------------------------------------------------


def _child(*args: object) -> list[str]:
    """The command line of this module run as a script in a new interpreter."""
    return [sys.executable, "-m", "benchmarks.store", *map(str, args)]


def _child_env() -> dict[str, str]:
    """The environment for a child process: this repository first on the path, whatever the working directory."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def _last_json(output: str) -> dict:
    """The last line of a child's stdout, which it prints as JSON."""
    return json.loads(output.strip().splitlines()[-1])


def _profile_row(path: Path, size_gb: float) -> Measurement:
    result = subprocess.run(
        _child("profile", path, PROFILE_LATENT, torch.get_num_threads()),
        env=_child_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the class_profile child process failed:\n{result.stderr[-3000:]}")
    figures = _last_json(result.stdout)
    anon, mapped = figures.get("anon_peak_rise_mb"), figures.get("file_peak_rise_mb")
    split = (
        f"; of the peak, ~{anon:.0f} MB anonymous memory (tensors) and ~{mapped:.0f} MB file pages mapped by the "
        "store (sampled every 5 ms from /proc/self/status)"
        if anon is not None
        else ""
    )
    return Measurement(
        f"class_profile(sae, store) of a {size_gb:.1f} GB store: peak RSS rise",
        figures["peak_rss_rise_mb"],
        "MB",
        Target("at_most", PROFILE_TARGET_MB),
        f"a fresh process; its peak RSS (VmHWM, reset to the current RSS after the imports, the SAE "
        f"({WIDTH} → {PROFILE_LATENT}, linear) and opening the store) minus that RSS; default chunk_rows "
        f"({CHUNK_ROWS}); the call took {figures['seconds']:.0f} s{split}",
        figures,
    )


def _status_kb() -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of this process, in kB (empty where /proc is missing)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")))
    return {name.rstrip(":"): int(value) for name, value, *_ in fields}


def _reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _profile_child(path: str, d_latent: int, threads: int) -> None:
    """Print, as JSON, how far ``class_profile(sae, store)`` raises the peak RSS of this (fresh) process.

    The peak is VmHWM from ``/proc/self/status``, reset to the current RSS right before the
    call: ``ru_maxrss`` would not do, since Linux carries it over from the parent through
    fork and exec (a child of a benchmark holding gigabytes starts with that as its
    "peak"). Where ``/proc`` is missing, the ``ru_maxrss`` rise is reported instead.
    """
    import resource  # Unix only

    from captum_salve import SparseAutoencoder, class_profile

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    store = ActivationStore.open(path)
    sae = SparseAutoencoder(store.dim, d_latent, "linear").eval()
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak_rss()
    start = _status_kb()
    peaks = dict(start)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            for name, value in _status_kb().items():
                peaks[name] = max(peaks[name], value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    class_profile(sae, store)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    end = _status_kb()
    maxrss_rise_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before_kb) / 1024
    figures = {"seconds": seconds, "rows": len(store), "ru_maxrss_rise_mb": maxrss_rise_mb}
    if start:
        baseline = start["VmRSS"] if reset else start["VmHWM"]
        figures |= {
            "peak_rss_rise_mb": (end["VmHWM"] - baseline) / 1024,
            "rss_before_mb": start["VmRSS"] / 1024,
            "peak_reset": reset,
            "anon_peak_rise_mb": (peaks["RssAnon"] - start["RssAnon"]) / 1024,
            "file_peak_rise_mb": (peaks["RssFile"] - start["RssFile"]) / 1024,
        }
    else:
        figures["peak_rss_rise_mb"] = maxrss_rise_mb
    print(json.dumps(figures))


# --- CUDA only: a torchrun worker against a plain process ------------------------------------------------------------


def _ddp_row(settings: Settings, folder: Path) -> Row:
    torch.manual_seed(0)
    n = DDP_ROWS[settings.quick]
    store = ActivationStore.from_set(ActivationSet(torch.randn(n, DDP_WIDTH)), folder / "ddp")
    args = ("ddp", store.path, DDP_LATENT, DDP_BATCH, torch.get_num_threads())
    commands = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
        + _child(*args)[1:],
        "one process": _child(*args),
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_index in range(settings.repeats(full=5, quick=2)):
        for name in names[round_index % 2 :] + names[: round_index % 2]:
            result = subprocess.run(commands[name], env=_child_env(), capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"the {name} training child failed:\n{result.stderr[-3000:]}")
            samples[name].append(_last_json(result.stdout)["seconds"])
    return Row(
        "train_sae one epoch on 1 GPU: torchrun worker (world size 1) / plain process",
        "torchrun",
        "one process",
        Timings(samples),
        Target("at_most", 1.1),
        f"{n:,} × {DDP_WIDTH} rows from a store, SAE {DDP_WIDTH} → {DDP_LATENT} (ReLU), batch {DDP_BATCH}, "
        "under captum_salve.distributed.launched(); each process times its second train_sae call (the first "
        "warms up CUDA), so process start-up and NCCL set-up are not counted. With one process train_saes "
        "wraps nothing in DistributedDataParallel, so the row measures what joining a process group costs",
    )


def _ddp_child(path: str, d_latent: int, batch: int, threads: int) -> None:
    """Time one training epoch, under torchrun or alone, and print the seconds (rank 0) as JSON.

    The benchmark runs it on the GPU; on a CPU-only machine it runs too (gloo), as a smoke test.
    """
    from captum_salve import train_sae
    from captum_salve.distributed import ProcessGroup, launched

    torch.set_num_threads(threads)
    with launched() as device:
        store = ActivationStore.open(path)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        times = []
        for _ in range(2):
            sync()
            started = time.perf_counter()
            train_sae(store, d_latent, epochs=1, batch_size=batch, device=device, progress=False)
            sync()
            times.append(time.perf_counter() - started)
        group = ProcessGroup()
        if group.rank == 0:
            print(json.dumps({"seconds": times[-1], "first_seconds": times[0], "world_size": group.size}))


def _main(argv: Sequence[str]) -> None:
    command, path, *numbers = argv
    if command == "profile":
        _profile_child(path, *map(int, numbers))
    elif command == "ddp":
        _ddp_child(path, *map(int, numbers))
    else:
        raise SystemExit(f"unknown command {command!r}: use 'profile' or 'ddp'")


if __name__ == "__main__":
    _main(sys.argv[1:])
