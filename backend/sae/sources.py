"""What the trainer reads: any ``ActivationSource`` (the workspace's shard cache, data/activations.py, is one), or
an (N, d) array file given on the command line (``ArrayActivations``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from backend.sae.model import SaeError


class ActivationSource(Protocol):
    d_in: int
    n_tokens: int

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]: ...


class ArrayActivations:
    """An (N, d) .npy (memory-mapped, never unpickled) or .safetensors file as a source."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise SaeError(f"activation file {self.path} does not exist")
        if self.path.suffix == ".npy":
            try:
                self.data = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise SaeError(f"{self.path} is not a plain numeric .npy array ({e})") from None
        elif self.path.suffix == ".safetensors":
            t = load_file(str(self.path))
            self.data = (t.get("activations") if "activations" in t else next(iter(t.values()))).float().numpy()
        else:
            raise SaeError(f"{self.path.name}: activations must be a .npy or .safetensors file of shape (N, d)")
        if self.data.ndim != 2:
            raise SaeError(f"{self.path.name} has shape {self.data.shape}; expected (N, d)")
        self.n_tokens, self.d_in = map(int, self.data.shape)

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
        order = np.random.default_rng(seed).permutation(self.n_tokens)
        for s in range(0, self.n_tokens, batch_size):
            idx = np.sort(order[s : s + batch_size])
            yield torch.from_numpy(np.asarray(self.data[idx], dtype=np.float32))
