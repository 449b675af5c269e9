"""The one retry of a blob request, in the store's pipeline: tenacity's backoff around each try.

A blob copy is retried in two layers only: each request here (the endpoint's ``retry_total`` times), and the whole
step by the runner. A try is retried when nothing reached the service or no answer came back (azure-core's
``ServiceRequestError``/``ServiceResponseError``) or when the service answered with a status the error mapping
calls transient (:data:`~migrator.providers.blob.errors.TRANSIENT_STATUS`: 408, 429, 500, 502, 503, 504). The wait
before each retry is tenacity's exponential backoff from the endpoint's ``retry_backoff`` (at most
:data:`MAX_WAIT`), with up to that much jitter, and never shorter than a Retry-After the service sent. The last
answer, or the last error, is what the caller sees (and maps).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies import HTTPPolicy
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from migrator.providers.blob.errors import TRANSIENT_STATUS

#: The longest wait between two tries of one request, in seconds.
MAX_WAIT = 60.0
#: Per-call options the SDK's own retry policy reads; this one takes its settings from the endpoint only.
_SDK_RETRY_OPTIONS = ("retry_total", "retry_connect", "retry_read", "retry_status", "retry_to_secondary",
                      "location_mode", "hosts", "retry_hook")


def _transient(response: Any) -> bool:
    return int(response.http_response.status_code) in TRANSIENT_STATUS


def _retry_after(state: RetryCallState) -> float:
    """The Retry-After (seconds) of the last try's answer, or 0."""
    outcome = state.outcome
    if outcome is None or outcome.failed:
        return 0.0
    value = outcome.result().http_response.headers.get("Retry-After")
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: not sent by the storage service


def _last_answer(state: RetryCallState) -> Any:
    """Out of tries: the last answer as it is (the caller maps its status), or the last error raised."""
    assert state.outcome is not None
    return state.outcome.result()  # raises the last error, when the last try raised one


class BackoffRetry(HTTPPolicy):  # type: ignore[type-arg]
    """Retries a request ``retry_total`` times on transient faults, waiting ``initial`` x 2^(n-1) seconds plus up to
    ``initial`` of jitter, or the service's Retry-After when longer."""

    def __init__(self, *, initial: float, retry_total: int, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self._tries = retry_total + 1
        self._backoff = wait_exponential(multiplier=initial, exp_base=2, max=MAX_WAIT) + wait_random(0, initial)
        self._sleep = sleep

    def _wait(self, state: RetryCallState) -> float:
        return max(float(self._backoff(state)), _retry_after(state))

    def send(self, request: Any) -> Any:
        options = request.context.options
        mode = options.get("location_mode") or "primary"  # always the primary: no secondary is configured
        for option in _SDK_RETRY_OPTIONS:
            options.pop(option, None)
        body = request.http_request.body
        position = None
        if hasattr(body, "read"):
            with contextlib.suppress(AttributeError, OSError):  # a stream that cannot tell is sent once
                position = body.tell()

        def one_try() -> Any:
            if position is not None:
                body.seek(position)  # a stream body is sent again from where the first try began
            response = self.next.send(request)
            response.http_response.location_mode = mode  # the SDK's response handling reads it
            return response

        # The first try goes out directly: nearly every request succeeds at once, and tenacity's machinery costs
        # a small blob's request as much CPU as the rest of the client's work. Only a try that failed transiently
        # hands over to tenacity, which takes it as its own first attempt (so waits and the count of tries are
        # as if tenacity had made it).
        first: list[Callable[[], Any]] = []
        try:
            response = one_try()
        except (ServiceRequestError, ServiceResponseError) as exc:
            if self._tries == 1:
                raise
            failed = exc
            first.append(lambda: _raise(failed))
        else:
            if self._tries == 1 or not _transient(response):
                return response
            first.append(lambda: response)

        def attempt() -> Any:
            return first.pop()() if first else one_try()

        retrying = Retrying(stop=stop_after_attempt(self._tries), wait=self._wait, sleep=self._sleep,
                            retry=_RETRY_ON, retry_error_callback=_last_answer)
        return retrying(attempt)


def _raise(exc: BaseException) -> Any:
    raise exc


_RETRY_ON = retry_if_exception_type((ServiceRequestError, ServiceResponseError)) | retry_if_result(_transient)
