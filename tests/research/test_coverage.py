"""Coverage helpers that reuse the indexer's chunked sparse encode and evaluation's decoder cosine."""

from __future__ import annotations

import numpy as np
import torch

from backend.research.coverage import _fires
from backend.sae.model import Sae, SaeSpec


def test_fires_is_the_dense_encode_above_zero_over_several_chunks():
    sae = Sae(SaeSpec(d_in=16, d_sae=40, architecture="topk", k=3), seed=0)
    x = torch.randn(5000, 16, generator=torch.Generator().manual_seed(0))  # > one CHUNK of 4,096 rows
    f = _fires(sae, x)
    with torch.inference_mode():
        dense = (sae.encode(x) > 0).numpy()
    assert f.shape == dense.shape and f.dtype == np.float32
    assert np.array_equal(f.toarray() > 0, dense) and f.max() == 1.0
