"""Property-based fuzzing of every documented operation (from /openapi.json) against the REAL tiny
bundle, in process over ASGI: whatever schemathesis sends, the API must never answer 5xx.

POST /admin/reload is excluded: a fuzzed `{}` legitimately reloads the model (about a second each),
and its behaviour is covered by test_serving_real_bundle.py. Budget: at most MAX_EXAMPLES per
operation and BUDGET_S seconds in all; examples past the budget are not sent (and counted, so the
test cannot pass vacuously).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from recsys.serving import ServingSettings, create_app

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 60
BUDGET_S = 75.0  # fuzzing only; the session's tiny-bundle build comes on top when run alone

_clock: dict[str, float] = {}
_sent: dict[str, int] = {}

# The OpenAPI document does not depend on the model, so it is taken from an app that never starts
# (no bundle is loaded). Requests go to a second, started app over the real bundle (fixture below).
# (schemathesis.pytest.from_fixture would be the direct route but breaks on pytest 9: Function._nodeid.)
schema = schemathesis.openapi.from_dict(create_app(ServingSettings(bundle=Path("unused"))).openapi()).exclude(
    path="/admin/reload"
)


@pytest.fixture(scope="module")
def fuzz_client(tiny_bundles):
    with TestClient(create_app(ServingSettings(bundle=tiny_bundles.first)), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        yield client


def _send(client: TestClient, case):
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    kwargs.pop("cookies", None)  # never set by this API's schema; httpx deprecates per-request cookies
    data = kwargs.pop("data", None)
    if data is not None:  # raw (possibly invalid) bodies: httpx calls them `content`
        kwargs["content"] = data if isinstance(data, (bytes, str)) else None
        if kwargs["content"] is None:
            kwargs.pop("content")
            kwargs["data"] = data
    return client.request(**kwargs)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure's first example is reported as is
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case, fuzz_client: TestClient) -> None:
    start = _clock.setdefault("start", time.monotonic())
    if time.monotonic() - start > BUDGET_S:
        _sent["skipped"] = _sent.get("skipped", 0) + 1
        return
    try:
        response = _send(fuzz_client, case)
    except Exception as exc:  # the HTTP client refuses to build it (e.g. a URL over 64 KiB): never sent
        if type(exc).__name__ != "InvalidURL":
            raise
        _sent["unsendable"] = _sent.get("unsendable", 0) + 1
        return
    _sent[case.operation.label] = _sent.get(case.operation.label, 0) + 1
    case.validate_response(response, checks=[not_a_server_error])


def test_fuzzing_actually_ran() -> None:
    """Guards the budget: most operations must have been exercised with many examples."""
    if not _sent:
        pytest.skip("run together with test_no_server_errors")
    exercised = {label: n for label, n in _sent.items() if label not in ("skipped", "unsendable")}
    print(
        "examples sent per operation:", exercised,
        "skipped past budget:", _sent.get("skipped", 0), "unsendable URLs:", _sent.get("unsendable", 0),
    )
    assert len(exercised) >= 8, exercised
    assert sum(exercised.values()) >= 200, exercised
