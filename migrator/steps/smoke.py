"""Smoke tests of the new instance: HTTP checks, source = target comparisons, DNS resolution.

The requests go through the HTTP provider (:mod:`migrator.providers.http`) and the DNS questions through the DNS
providers' resolver (:func:`migrator.providers.dns.resolve`); this module only judges the answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from migrator.errors import ProviderError, VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.dns import NoAnswer, answer_text, resolve
from migrator.providers.http import HttpRequest, send
from migrator.secrets import Secret
from migrator.step import Estimate, Params, PlanResult, Step, StepContext

_MAX_DETAIL = 10
#: Checks sent at once, at most (a smoke test lists a handful).
_AT_ONCE = 8


# -- params ---------------------------------------------------------------------------------------------------


class HttpCheck(Params):
    """One request to the new instance and what its answer must be."""

    name: str | None = None
    url: str
    method: str = "GET"
    headers: dict[str, Secret] = Field(default_factory=dict)
    body: Any = None
    expect_status: int | list[int] = 200
    #: Text (or texts) the response body must contain.
    body_contains: str | list[str] | None = None
    max_latency_ms: float | None = Field(None, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)

    def label(self) -> str:
        return self.name or f"http {self.method.upper()} {self.url}"


class Comparison(Params):
    """Two values that must be equal: a fingerprint or an inventory of the source and of the target."""

    name: str
    source: Any
    target: Any


class DnsCheck(Params):
    """A name that must resolve, at the given name server, to exactly the expected values."""

    name: str
    type: Literal["A", "AAAA", "CNAME", "TXT"] = "A"
    expect: str | list[str]
    nameserver: str = "127.0.0.1"
    port: int = Field(53, gt=0, lt=65536)
    timeout_seconds: float = Field(5.0, gt=0)


class SmokeTestParams(Params):
    http: list[HttpCheck] = Field(default_factory=list)
    fingerprints: list[Comparison] = Field(default_factory=list)
    inventories: list[Comparison] = Field(default_factory=list)
    dns: list[DnsCheck] = Field(default_factory=list)
    #: Whether a failed smoke test may be retried by the step's retry policy (a new instance warming up).
    retry_failures: bool = False

    @model_validator(mode="after")
    def _some_check(self) -> SmokeTestParams:
        if not (self.http or self.fingerprints or self.inventories or self.dns):
            raise ValueError("a smoke test needs at least one check (http, fingerprints, inventories or dns)")
        return self


# -- checks ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOutcome:
    check: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


def run_http_check(ctx: StepContext, check: HttpCheck) -> CheckOutcome:
    expected = check.expect_status if isinstance(check.expect_status, list) else [check.expect_status]
    try:
        response = send(HttpRequest.with_payload(check.method, check.url, check.body, check.headers,
                                                 timeout=check.timeout_seconds, expect=expected), ctx.reveal)
    except ProviderError as exc:  # no answer, or a TLS certificate that does not verify
        return CheckOutcome(check.label(), False, exc.message)
    problems = []
    if response.status not in expected:
        problems.append(f"status {response.status}, expected {' or '.join(map(str, expected))}")
    wanted = [check.body_contains] if isinstance(check.body_contains, str) else (check.body_contains or [])
    text = response.text()
    # The body itself is never quoted: it may hold personal data.
    problems += [f"body does not contain {w!r}" for w in wanted if w not in text]
    if check.max_latency_ms is not None and response.elapsed_ms > check.max_latency_ms:
        problems.append(f"took {response.elapsed_ms:.0f} ms, more than {check.max_latency_ms:g} ms")
    detail = "; ".join(problems) or f"status {response.status} in {response.elapsed_ms:.0f} ms"
    return CheckOutcome(check.label(), not problems, detail)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 16 else text[:12] + "…"


def compare(kind: str, comparison: Comparison) -> CheckOutcome:
    label = f"{kind} {comparison.name}"
    source, target = comparison.source, comparison.target
    if source is None or target is None:
        missing = "source" if source is None else "target"
        return CheckOutcome(label, False, f"no {missing} value to compare")
    if source == target:
        return CheckOutcome(label, True, "source = target")
    if isinstance(source, Mapping) and isinstance(target, Mapping):
        keys = sorted({str(k) for k in source} | {str(k) for k in target})
        differing = [k for k in keys if source.get(k) != target.get(k)]
        shown = ", ".join(differing[:_MAX_DETAIL]) + (" …" if len(differing) > _MAX_DETAIL else "")
        return CheckOutcome(label, False, f"source ≠ target in {len(differing)} entries: {shown}")
    return CheckOutcome(label, False, f"source {_short(source)} ≠ target {_short(target)}")


def run_dns_check(check: DnsCheck) -> CheckOutcome:
    label = f"dns {check.name} {check.type} @{check.nameserver}:{check.port}"
    try:
        got = sorted(resolve(check.name, check.type, check.nameserver, port=check.port,
                             timeout=check.timeout_seconds))
    except NoAnswer as exc:
        return CheckOutcome(label, False, exc.problem)
    expected = sorted(answer_text(check.type, v) for v in
                      ([check.expect] if isinstance(check.expect, str) else check.expect))
    if got == expected:
        return CheckOutcome(label, True, f"resolves to {', '.join(got)}")
    return CheckOutcome(label, False, f"resolves to {', '.join(got) or 'nothing'}, expected {', '.join(expected)}")


# -- the step -------------------------------------------------------------------------------------------------


class SmokeTest(Step[SmokeTestParams]):
    """Tests the new instance end to end; changes nothing.

    Runs every check (HTTP answers and latency, database fingerprints and blob inventories of source and target,
    DNS resolution) and fails with :class:`VerificationFailed` naming each failing check. It is never "already
    done": every run tests again. Nothing to undo (compensating it does nothing).
    """

    kind = "smoke.test"
    Params = SmokeTestParams
    summary = "HTTP checks of the new instance, source = target fingerprints and inventories, DNS resolution"

    def _count(self) -> int:
        p = self.params
        return len(p.http) + len(p.fingerprints) + len(p.inventories) + len(p.dns)

    def plan(self, ctx: StepContext) -> PlanResult:
        p = self.params
        checks = ([c.label() for c in p.http] + [f"fingerprint {c.name}" for c in p.fingerprints]
                  + [f"inventory {c.name}" for c in p.inventories]
                  + [f"dns {c.name} {c.type} @{c.nameserver}:{c.port}" for c in p.dns])
        return PlanResult(changes=[f"test {c}" for c in checks], reason="read-only checks of the new instance",
                          estimate=estimate(self._work(len(p.http), len(p.dns)), rates(ctx), items=self._count()),
                          details={"checks": checks})

    @classmethod
    def estimate_deferred(cls, raw_params: Mapping[str, Any]) -> Estimate | None:
        """Counted from the checks as written: their number does not depend on the outputs they compare."""
        def count(key: str) -> int:
            value = raw_params.get(key)
            return len(value) if isinstance(value, (list, dict)) else 0

        work = cls._work(count("http"), count("dns"))
        work.note = "counted from the checks as written; " + work.note
        return estimate(work, items=sum(count(k) for k in ("http", "fingerprints", "inventories", "dns")))

    @staticmethod
    def _work(http: int, dns: int) -> Work:
        """HTTP checks and DNS queries; the comparisons of fingerprints and inventories cost nothing more."""
        return Work(note="comparisons free").add("http.request", http).add("dns.query", dns)

    def run_checks(self, ctx: StepContext, report: Callable[[CheckOutcome], None] | None = None
                   ) -> list[CheckOutcome]:
        """Every check's outcome, in the order the params list them. The requests and DNS questions are sent
        at once (each on a thread of its own, at most :data:`_AT_ONCE`): they are independent reads, and the
        step takes as long as the slowest instead of their sum; each request's latency is its own. ``report``
        is given each outcome as soon as it is known (the comparisons first, while the requests are out)."""
        p = self.params
        tell = report or (lambda outcome: None)
        with ThreadPoolExecutor(max_workers=max(1, min(_AT_ONCE, len(p.http) + len(p.dns))),
                                thread_name_prefix="smoke") as pool:
            http = [pool.submit(run_http_check, ctx, c) for c in p.http]
            dns = [pool.submit(run_dns_check, c) for c in p.dns]
            compared = [compare("fingerprint", c) for c in p.fingerprints]
            compared += [compare("inventory", c) for c in p.inventories]
            for outcome in compared:
                tell(outcome)
            for done in as_completed([*http, *dns]):
                tell(done.result())
            return [f.result() for f in http] + compared + [f.result() for f in dns]

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        def event(outcome: CheckOutcome) -> None:
            ctx.event("smoke.check", ctx.redactor.redact(f"{outcome.check}: {outcome.detail}"), ok=outcome.ok)

        outcomes = self.run_checks(ctx, event)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            listing = "; ".join(f"{o.check}: {o.detail}" for o in failed)
            raise VerificationFailed(
                ctx.redactor.redact(f"{self.step_id}: {len(failed)} of {len(outcomes)} smoke checks failed: "
                                    f"{listing}"),
                step_id=self.step_id, retryable=self.params.retry_failures)
        return {"checks": [o.as_dict() for o in outcomes], "passed": len(outcomes), "failed": 0}
