"""Every service's API under requests generated from its own OpenAPI document (schemathesis):
no 5xx, and every response that has a documented schema matches it.

Each API runs as its own process on the real broker and store, called with the admin key
(admin may call every endpoint, so generated requests reach the handlers, not only the
role check)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.support.processes import ServiceApi

SERVICES = ("identity", "profile", "consent", "social", "export")
CHECKS = [not_a_server_error, response_schema_conformance]
EXAMPLES_PER_OPERATION = 15


def fuzz(operation, base_url: str, headers: dict) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

    run()


@pytest.mark.parametrize("service", SERVICES)
def test_generated_requests_get_no_server_error_and_match_the_documented_schema(
        service, test_env, api_keys):
    api = ServiceApi(service, test_env).start()
    try:
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        headers = {"Authorization": f"Bearer {api_keys['admin']}"}
        failures, tried = [], 0
        for result in schema.get_all_operations():
            operation = result.ok()
            tried += 1
            try:
                fuzz(operation, api.url, headers)
            except Exception as failure:  # noqa: BLE001 - collect every operation's failure
                failures.append(f"{operation.label}: {failure}")
    finally:
        api.stop()
    assert tried > 0
    assert not failures, "\n\n".join(failures) + "\n\n" + api.tail(30)
