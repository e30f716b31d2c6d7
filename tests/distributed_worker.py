"""Run by ``torchrun`` in ``tests/test_distributed.py``: train SAEs on a store and write every rank's weights.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py STORE OUT [--crash]``
trains one ReLU and one TopK SAE for two epochs; with ``--crash`` rank 0 stops right
after the first epoch's checkpoints (torchrun then stops the other), and a rerun without it resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from captum_salve.distributed import ProcessGroup, launched
from captum_salve.sae import train as train_module
from captum_salve.store import ActivationStore

CONFIGS = [
    train_module.SAEConfig(16, "relu", seed=1),
    train_module.SAEConfig(16, "topk", k=4, seed=2),
    train_module.SAEConfig(16, "jumprelu", seed=3),
]
NAMES = ("relu", "topk", "jumprelu")
SETTINGS = dict(epochs=2, batch_size=50, shuffle_seed=3, progress=False)


def weights_of(results: list) -> dict[str, torch.Tensor]:
    """Every tensor of the trained SAEs, named ``<relu|topk|jumprelu>.<parameter>``."""
    return {
        f"{name}.{key}": value.contiguous()
        for (sae, _), name in zip(results, NAMES, strict=True)
        for key, value in sae.state_dict().items()
    }


def main(store: str, out: str, crash: bool) -> None:
    torch.set_num_threads(1)
    with launched("cpu"):
        rank = ProcessGroup().rank
        if crash:
            real, saved = train_module._save_checkpoint, []

            def save_then_stop(*args):
                real(*args)
                saved.append(1)
                if len(saved) == len(CONFIGS):  # every SAE's checkpoint after the first epoch
                    raise SystemExit(3)

            train_module._save_checkpoint = save_then_stop
        folders = [Path(out) / f"{name}.training" for name in NAMES]
        resume = all((folder / train_module.CHECKPOINT_FILE).is_file() for folder in folders)
        results = train_module.train_saes(
            ActivationStore.open(store), CONFIGS, checkpoint_dirs=folders, resume=resume, **SETTINGS
        )
        save_file(weights_of(results), f"{out}/rank{rank}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--crash" in sys.argv)
