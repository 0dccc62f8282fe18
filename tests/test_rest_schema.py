"""Schemathesis against the service's own OpenAPI schema: every /v1 operation, no 5xx, each answer as documented.

Driven with Hypothesis directly: schemathesis' pytest fixture loader does not run under pytest 9.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from devtools.demo_server import launched, test_settings

MAX_EXAMPLES = 25  # per operation: every /v1 operation in well under 2 minutes on two cores


def test_every_v1_operation_answers_as_documented(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    # rate limit off: generated requests must meet the handlers, not the limiter
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb",
                           admin_password="not-guessed", rate_limit=0)
    with launched(config) as (_, url):
        schema = schemathesis.openapi.from_url(url + "openapi.json").include(path_regex="^/v1/")
        operations = [result.ok() for result in schema.get_all_operations()]
        cases: dict[str, int] = {}
        failures: dict[str, str] = {}
        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"

            @given(case=operation.as_strategy())
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                cases[label] = cases.get(label, 0) + 1
                # left out: "schema-valid data is accepted". Any bytes are a schema-valid image field, and a
                # random id a schema-valid path; refusing those (400, 404) is the documented answer
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            try:
                run()
            except Exception as exc:  # keep going: one report for every operation
                failures[label] = str(exc)[:2000]
        print(f"\nschemathesis: {len(operations)} operations, {sum(cases.values())} cases, "
              f"{len(failures)} failing: {cases}")
        assert len(operations) >= 9
        assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
