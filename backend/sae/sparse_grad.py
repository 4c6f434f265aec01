"""The sparse autograd of TopK and BatchTopK training steps (backend/sae/train.py): the encoder's selected
pre-activations and the decoder, each with a backward that touches only the selected (token, latent) pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.sae.kernels import bucket_order, pair_dots


class Pairs:
    """Selected (token, latent) pairs, rows ascending, with the bag offsets and the by-latent order both sparse
    backwards use (computed once per step)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n: int, d_sae: int, per_row: int | None = None):
        self.rows, self.cols = rows, cols
        if per_row is not None:  # every row holds exactly per_row pairs
            self.row_offsets = torch.arange(0, n * per_row, per_row, device=rows.device)
        else:
            self.row_offsets = bucket_order(rows, n)[1]
        self.order, self.col_offsets = bucket_order(cols, d_sae)
        self.rows_by_col = rows[self.order]


class SelectedPre(torch.autograd.Function):
    """vals[n] = pre[rows[n], cols[n]] with pre = x_c @ W_enc + b_enc, whose values ``v`` the no-grad selection
    already computed (float32). The backward touches only the selected pairs:
        dW_enc[:, j] = sum_{n: cols[n]=j} g_n x_c[rows[n]]   embedding_bag over x_c, one bag per latent
        db_enc[j]    = sum_{n: cols[n]=j} g_n
    The gradient through b_dec in the encoder is dropped (b_dec is learned through the decoder), as in sparsify."""

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, v, pairs: Pairs):
        ctx.save_for_backward(x_c)
        ctx.pairs = pairs
        return v.clone()

    @staticmethod
    def backward(ctx, g):
        (x_c,), P = ctx.saved_tensors, ctx.pairs
        g_by_col = g[P.order]
        gW_t = F.embedding_bag(
            P.rows_by_col, x_c, P.col_offsets, mode="sum", per_sample_weights=g_by_col
        )  # (d_sae, d_in)
        gb = torch.zeros(len(P.col_offsets), dtype=g.dtype, device=g.device).index_add_(0, P.cols, g)
        return None, gW_t.t(), gb, None, None


class SparseDecode(torch.autograd.Function):
    """out[i] = sum_{n: rows[n]=i} vals[n] W_dec[cols[n]] (N, d_in), with a backward over the pairs only:
        dvals[n]  = grad[rows[n]] . W_dec[cols[n]]                 (topk.pair_dots)
        dW_dec[j] = sum_{n: cols[n]=j} vals[n] grad[rows[n]]       embedding_bag over grad, one bag per latent
    (torch's own embedding_bag backward sorts the indices with a threaded sort that stalls under CPU contention)."""

    @staticmethod
    def forward(ctx, vals, W_dec, pairs: Pairs):
        ctx.save_for_backward(vals, W_dec)
        ctx.pairs = pairs
        return F.embedding_bag(pairs.cols, W_dec, pairs.row_offsets, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, grad):
        (vals, W_dec), P = ctx.saved_tensors, ctx.pairs
        grad = grad.contiguous()
        gv = pair_dots(P.rows, P.cols, grad, W_dec, None) if ctx.needs_input_grad[0] else None
        gW = None
        if ctx.needs_input_grad[1]:
            gW = F.embedding_bag(P.rows_by_col, grad, P.col_offsets, mode="sum", per_sample_weights=vals[P.order])
        return gv, gW, None


def sparse_decode(vals: torch.Tensor, W_dec: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """sum of vals * W_dec[cols] per row: (n, d_in)."""
    return SparseDecode.apply(vals, W_dec, pairs)
