"""/openapi.json matches the real routes, is a valid OpenAPI 3.1 document, and a property-based run of
schemathesis against a live server finds no 500 and no answer that contradicts the document."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from classifier.heuristic import SaturationHeuristic
from proxy.app import create_app
from proxy.openapi import openapi_document
from proxy.settings import Settings

EXAMPLES_PER_OPERATION = 25


def routed_operations(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    app = create_app(Settings(), classifier=SaturationHeuristic())
    document = openapi_document(Settings(), "test")
    assert routed_operations(app) == documented_operations(document)
    assert not [route for route in app.router.routes() if route.method == "HEAD"]


def test_document_is_valid_openapi_3_1_and_shows_the_real_limits() -> None:
    document = openapi_document(Settings(max_urls_per_batch=7), "model-x")
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []
    assert document["openapi"] == "3.1.0" and "model-x" in document["info"]["description"]
    body = document["paths"]["/api/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["urls"]["maxItems"] == 7
    schemathesis.openapi.from_dict(document).validate()


class TestNetResolver(AbstractResolver):
    """Resolves every name to 192.0.2.1 (TEST-NET-1), which the address policy refuses: no real DNS."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="192.0.2.1", port=port, family=socket.AF_INET, proto=0, flags=0)]

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    """The production address policy, in a thread of its own: schemathesis calls it synchronously."""
    settings = Settings(
        port=0,
        connect_timeout=0.3,
        read_timeout=0.3,
        total_timeout=0.5,
        rate_limit_per_minute=0,
        batch_wait_ms=1,
        database_url="sqlite://",
    )
    ready = threading.Event()
    stop: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(create_app(settings, classifier=SaturationHeuristic(), resolver=TestNetResolver()))
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        stop["loop"], stop["port"] = loop, runner.addresses[0][1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="live-server", daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield f"http://127.0.0.1:{stop['port']}"
    finally:
        stop["loop"].call_soon_threadsafe(stop["loop"].stop)
        thread.join(10)


def test_served_document_is_the_built_one(live_server: str) -> None:
    served = requests.get(f"{live_server}/openapi.json", timeout=5).json()
    assert served == openapi_document(Settings(port=0), SaturationHeuristic.version)


def test_property_based_run_finds_no_500_and_no_undocumented_answer(live_server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    statuses: dict[str, set[int]] = {}
    labels = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # an Err here would be our bug: let it raise
            labels.append(operation.label)
            label = operation.label

            @given(case=operation.as_strategy())
            @hypothesis_settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                response = case.call(base_url=live_server, session=session, timeout=5)
                # check() runs within this iteration, so the loop variable is the right one.
                statuses.setdefault(label, set()).add(response.status_code)  # noqa: B023
                assert response.status_code != 500, response.text
                case.validate_response(
                    response,
                    checks=[
                        status_code_conformance,
                        content_type_conformance,
                        response_headers_conformance,
                        response_schema_conformance,
                    ],
                )

            check()
    assert set(statuses) == set(labels) and len(labels) >= 10
    assert 404 in statuses["GET /api/v1/verdicts/{sha256}"]  # valid hashes were generated, not only junk
