"""Long-running operations that survive a restart: the continuation token is checkpointed before the wait.

``run_lro(ctx, key, begin, action=...)`` calls ``begin(None)`` to send the initial request, writes the
poller's continuation token to ``ctx.memo[key]`` at once, then waits. A resumed run finds the token and calls
``begin(token)``, which re-attaches to the pending operation (``continuation_token=`` on ``begin_*``) instead of
issuing it again. The token holds the operation's polling URLs, never the request body or a credential.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.polling import LROPoller

from migrator.errors import TransientError
from migrator.providers.azure.errors import TRANSIENT_STATUS, arm_errors, translate

#: How long one wait lasts before the cancel flag is looked at again.
WAIT_SLICE = 0.5


def run_lro(ctx: Any, key: str, begin: Callable[[str | None], LROPoller[Any]], *, action: str,
            timeout: float | None = None) -> Any:
    """Starts (or re-attaches to) a long-running operation and waits for its result."""
    memo_key = f"lro:{key}"
    token = ctx.memo.get(memo_key)
    if token:
        ctx.event("lro.reattach", f"{action}: re-attaching to the pending operation", key=key)
        with arm_errors(f"{action} (re-attaching)"):
            poller = begin(token)
    else:
        with arm_errors(action):
            poller = begin(None)
        ctx.memo.set(memo_key, poller.continuation_token())
        ctx.event("lro.started", f"{action}: started", key=key)
    try:
        result = _wait(ctx, poller, action, timeout)
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, HttpResponseError) and status not in TRANSIENT_STATUS:
            # The operation ended Failed or Canceled: the token is spent; a retry must start it again.
            ctx.memo.delete(memo_key)
        # Otherwise the status could not be read (throttled, 5xx, no answer): the operation may still be running,
        # so the token stays and a retry re-attaches.
        raise translate(exc, action) from exc
    ctx.memo.delete(memo_key)
    return result


def _wait(ctx: Any, poller: LROPoller[Any], action: str, timeout: float | None) -> Any:
    waited = 0.0
    while not poller.done():
        ctx.raise_if_cancelled()
        poller.wait(WAIT_SLICE)  # re-raises what the polling thread met
        waited += WAIT_SLICE
        ctx.progress(f"{action}: {poller.status()}")
        if timeout is not None and waited >= timeout and not poller.done():
            raise TransientError(f"{action}: still running after {timeout:g}s",
                                 hint="the operation continues in Azure; resume re-attaches to it")
    return poller.result()


def pending(ctx: Any, key: str) -> bool:
    """Whether a long-running operation under ``key`` was started and not yet seen to finish."""
    return bool(ctx.memo.get(f"lro:{key}"))
