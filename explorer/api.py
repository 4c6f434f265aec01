"""Named JSON endpoints: every answer is a normal result or ``{"error": "<one line>"}``.

``json_endpoint`` wraps each function given to ``gr.api``. A ValueError is a request the backend
refused (its message was written for the user: what was wrong and what to send). Anything else is a
fault of the server: the client gets one generic line, and the traceback goes to the server log,
never to the client (no paths, no SQL).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sae_explorer")
BAD_INPUT = (ValueError, TypeError, OverflowError)  # what a UI handler turns into a warning
INTERNAL = "the server could not answer this request (an internal error; the details are in the server's log)"


def one_line(e: BaseException) -> str:
    """The first line of an error's message (user-level messages are one line already)."""
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def json_endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with refused requests as ``{"error": message}`` and faults as a generic, logged error."""

    @functools.wraps(fn)
    def endpoint(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            return {"error": one_line(e)}
        except Exception:
            log.exception("endpoint %s failed", fn.__name__)
            return {"error": INTERNAL}

    return endpoint
