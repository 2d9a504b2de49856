"""schemathesis against the server's own OpenAPI document: no request may produce a 5xx.

Every operation the document declares is fuzzed with valid (positive) and invalid (negative)
requests, in-process against the ASGI app. The fast suite runs FAST_EXAMPLES per operation and
mode; ``-m slow`` runs SLOW_EXAMPLES.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from deploy_helpers import tiny_artifact  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from mnistlab.serve import Settings, create_app  # noqa: E402

FAST_EXAMPLES = int(os.environ.get("MNISTLAB_FUZZ_EXAMPLES", "25"))
SLOW_EXAMPLES = 400
OPERATIONS = ["GET /health", "GET /model", "POST /predict", "POST /predict/batch", "POST /read", "POST /explain"]
# (operation, mode): invalid requests only where there is something to get wrong (the GETs take no input)
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE) for op in OPERATIONS if op.startswith("POST")]
IDS = [f"{op}-{mode.value}" for op, mode in CASES]


@pytest.fixture(scope="module")
def api_schema():
    app = create_app(Settings(model=str(tiny_artifact()), threads=1))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_document_declares_every_operation(api_schema):
    declared = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= declared


def fuzz(api_schema, operation: str, mode: GenerationMode, examples: int) -> int:
    """Send ``examples`` generated requests to one operation; fail on any 5xx. The count sent."""
    method, path = operation.split(" ")
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)
    sent = 0

    @settings(max_examples=examples, deadline=None, database=None, derandomize=examples == FAST_EXAMPLES,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:
        nonlocal sent
        response = case.call()
        sent += 1
        assert response.status_code < 500, f"{operation}: {response.status_code} {response.text[:300]}\n{case}"
        case.validate_response(response, checks=[not_a_server_error])

    run()
    return sent


@pytest.mark.parametrize("operation, mode", CASES, ids=IDS)
def test_no_endpoint_answers_5xx(api_schema, operation, mode):
    sent = fuzz(api_schema, operation, mode, FAST_EXAMPLES)
    print(f"{operation} {mode.value}: {sent} requests")
    assert sent > 0


@pytest.mark.slow
@pytest.mark.parametrize("operation, mode", CASES, ids=IDS)
def test_no_endpoint_answers_5xx_long(api_schema, operation, mode):
    sent = fuzz(api_schema, operation, mode, SLOW_EXAMPLES)
    print(f"{operation} {mode.value}: {sent} requests")
    assert sent > 0
