"""The OpenAPI documents as integrators use them (issue 13, point 6): one Problem schema that
every error response references; each operation declares only the errors it can give (none on
health and readiness), a 401 with `WWW-Authenticate`, a 429 or 503 with `Retry-After`; and a
typed client generated from each document with openapi-python-client drops no response.

The apps are built in process and their lifespan never runs: no database, no broker.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.common.web import PROBLEM_JSON, PROBLEM_REF, PROBLEM_SCHEMA
from services.console.app import create_app as create_console
from tests.auth_helpers import auth_headers

pytestmark = pytest.mark.unit

SERVICES: dict[str, FastAPI] = {
    service: importlib.import_module(f"services.{service}.app").create_app()
    for service in ("intake", "routing", "approval", "delivery")
}
APPS: dict[str, FastAPI] = {**SERVICES, "console": create_console()}
OPS_PATHS = ("/healthz", "/readyz")
# In a venv of its own beside tongban's (make install): its pins would hold ours back.
GENERATOR = Path(sys.executable).parent.parent / "codegen" / "bin" / "openapi-python-client"
METHODS = ("get", "put", "post", "delete", "patch")


def document(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = APPS[name].openapi()
    return spec


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def errors_of(operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}


def header(response: dict[str, Any], name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = response.get("headers", {}).get(name)
    return found


@pytest.mark.parametrize("name", APPS)
def test_every_error_response_references_the_one_problem_schema(name: str) -> None:
    spec = document(name)
    schemas = spec["components"]["schemas"]
    assert schemas[PROBLEM_SCHEMA]["required"] == ["type", "title", "status", "code"]
    # FastAPI's own 422 body is never described: tongban's 422 is problem JSON too.
    assert not {"ProblemBody", "HTTPValidationError", "ValidationError"} & set(schemas)
    for path, method, operation in operations(spec):
        if path in OPS_PATHS:
            continue
        for status, response in errors_of(operation).items():
            assert response["content"] == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}, (
                f"{method.upper()} {path} {status}"
            )
    text = json.dumps(spec)
    assert '"title": "ProblemBody"' not in text  # no inline copy left anywhere


@pytest.mark.parametrize("name", APPS)
def test_health_and_readiness_declare_no_error(name: str) -> None:
    paths = document(name)["paths"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200"}
    # Readiness's 503 is its "not ready" answer: the same body as its 200, not a problem.
    readiness = paths["/readyz"]["get"]["responses"]
    assert set(readiness) == {"200", "503"}
    for answer in readiness.values():
        assert answer["content"] == {
            "application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}
        }
    assert "/metrics" not in paths


@pytest.mark.parametrize("name", APPS)
def test_each_operation_declares_the_errors_its_inputs_and_edges_can_give(name: str) -> None:
    """What each operation can answer follows from what it takes: a token (401), a body (400
    when it cannot be decoded, 413),
    any input (422: invalid or unstorable), a case id (404); every service route sits behind
    the load shedder and a database (503)."""
    for path, method, operation in operations(document(name)):
        if path in OPS_PATHS:
            continue
        where = f"{name}: {method.upper()} {path}"
        declared = errors_of(operation)
        inputs = operation.get("parameters", [])
        has_body = "requestBody" in operation
        assert (401 in declared) == bool(operation.get("security")), where
        assert (413 in declared) == (400 in declared) == has_body, where
        assert (422 in declared) == (bool(inputs) or has_body), where
        if "{case_id}" in path:  # a case missing, or outside the caller's scope
            assert 404 in declared, where
        if name in SERVICES:
            assert 503 in declared, where
        assert 500 not in declared, where
        if 401 in declared:
            challenge = header(declared[401], "WWW-Authenticate")
            assert challenge is not None and challenge["required"], where
        for status in (429, 503):
            if status in declared:
                retry = header(declared[status], "Retry-After")
                assert retry is not None and retry["required"], f"{where} {status}"
                assert retry["schema"] == {"type": "integer", "minimum": 1}


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "X1", path)


@pytest.mark.parametrize("name", SERVICES)
async def test_every_operation_declaring_401_refuses_a_request_without_a_token(
    name: str,
) -> None:
    """The declared 401s are the real ones: each such operation answers a request without a
    token 401 with its challenge, before reading its body or touching the database."""
    app = SERVICES[name]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        secured = [
            (path, method)
            for path, method, operation in operations(document(name))
            if 401 in errors_of(operation)
        ]
        assert secured
        for path, method in secured:
            answer = await client.request(method, _fill(path))
            assert answer.status_code == 401, (path, method, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer ")
            assert answer.headers["content-type"] == PROBLEM_JSON


async def test_a_body_that_cannot_be_decoded_is_the_declared_400() -> None:
    transport = httpx.ASGITransport(app=SERVICES["intake"], raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post(
            "/v1/cases",
            content=b"\x9d\xc2\xff{",
            headers={"Content-Type": "application/json", **auth_headers("clerk", "online")},
        )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["code"] == "malformed_body"
    assert "400" in document("intake")["paths"]["/v1/cases"]["post"]["responses"]


async def test_every_503_problem_carries_retry_after() -> None:
    """Even a 503 raised without a `retry_after` has the header the documents promise."""
    from services.common.web import Problem, problem_response

    answer = problem_response(Problem(503, "x_unavailable", "Not now"))
    assert answer.headers["retry-after"] == "1"
    assert "retry-after" not in problem_response(Problem(409, "x", "No")).headers


# --------------------------------------------------------------------------- generated clients


def _generate(name: str, spec: dict[str, Any], where: Path) -> tuple[str, str]:
    """Run openapi-python-client on the document; answer the package name and its output."""
    assert GENERATOR.exists(), "openapi-python-client is not installed (make install)"
    package = f"tongban_{name}_client"
    (where / "openapi.json").write_text(json.dumps(spec))
    # No post hooks: formatting the generated code (ruff) is not what is tested here.
    (where / "config.yaml").write_text("post_hooks: []\n")
    run = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(where / "openapi.json"),
            "--output-path",
            str(where / package),
            "--meta",
            "none",
            "--config",
            str(where / "config.yaml"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return package, output


def _api_modules(package: str, root: Path) -> list[ModuleType]:
    return [
        importlib.import_module(".".join((package, *file.relative_to(root).with_suffix("").parts)))
        for file in sorted((root / "api").rglob("*.py"))
        if file.name != "__init__.py"
    ]


def _route_of(module: ModuleType) -> tuple[str, str]:
    source = Path(str(module.__file__)).read_text()
    method = re.search(r'"method": "(\w+)"', source)
    url = re.search(r'"url": "([^"]+)"', source)
    assert method and url, module.__name__
    return method.group(1), url.group(1)


@pytest.mark.parametrize("name", APPS)
def test_a_typed_client_generated_from_the_document_drops_no_response(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = document(name)
    package, output = _generate(name, spec, tmp_path)
    for dropped in ("WARNING", "omitted", "dropped", "Cannot parse", "Could not"):
        assert dropped not in output, output

    monkeypatch.syspath_prepend(str(tmp_path))
    client_module = importlib.import_module(f"{package}.client")
    errors_module = importlib.import_module(f"{package}.errors")
    client = client_module.Client(base_url="http://svc", raise_on_unexpected_status=True)
    modules = {_route_of(m): m for m in _api_modules(package, tmp_path / package)}
    declared = {(method, path): op for path, method, op in operations(spec)}
    assert set(modules) == set(declared), "one generated function per operation"

    problem = {"type": "about:blank", "title": "t", "status": 0, "code": "c", "errors": []}
    for (method, path), module in modules.items():
        assert callable(module.sync_detailed) and callable(module.asyncio_detailed)
        for status in declared[(method, path)]["responses"]:
            answer = httpx.Response(int(status), json={**problem, "status": int(status)})
            try:
                parsed = module._parse_response(client=client, response=answer)
            except errors_module.UnexpectedStatus:
                pytest.fail(f"{name}: {method.upper()} {path} dropped its {status} response")
            except Exception:
                continue  # a success body it tried to parse and found not to fit
            if int(status) >= 400 and path not in OPS_PATHS:
                assert type(parsed).__name__ == PROBLEM_SCHEMA, (path, status, parsed)
        # An answer no operation declares is refused: this check can fail.
        with pytest.raises(errors_module.UnexpectedStatus):
            module._parse_response(client=client, response=httpx.Response(418, json=problem))
