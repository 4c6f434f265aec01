"""Request-scoped forward hooks shared by all adapters.

PyTorch hooks live on the module, so a hook registered by one request would also fire for
another request running on another thread. Every hook here is (1) registered inside a context
manager and removed in ``finally`` and (2) tagged with the context that opened it: it acts only
for forward passes run from that same context (a ``contextvars`` token), and passes through for
everyone else. Concurrent requests therefore never see each other's interventions.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

_active: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("saex_active_hooks", default=frozenset())
_ids = itertools.count()


class StopForward(Exception):
    """Raised by a capture hook to end the forward pass after the hooked module."""

    def __init__(self, acts: torch.Tensor):
        super().__init__("forward stopped after the hooked block")
        self.acts = acts


def _main(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, new: torch.Tensor):
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


@contextmanager
def scoped_hook(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Run ``fn(acts)`` on ``module``'s output for forward passes of this context only.

    If ``fn`` returns a tensor it replaces the output; ``fn`` may raise (e.g. StopForward).
    """
    hid = next(_ids)

    def hook(_mod, _inp, output):
        if hid not in _active.get():
            return None
        new = fn(_main(output))
        return None if new is None else _replace(output, new)

    handle = module.register_forward_hook(hook)
    token = _active.set(_active.get() | {hid})
    try:
        yield
    finally:
        _active.reset(token)
        handle.remove()


@contextmanager
def capture_and_stop(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Context manager; forward passes raise StopForward carrying ``module``'s output."""

    def stop(acts: torch.Tensor):
        raise StopForward(acts)

    with scoped_hook(module, stop):
        yield []
