"""Text no service can store never gets in: `contracts.common.Text` and `Code`, and how the REST
edge answers them (422 `invalid_value` naming the field); who reads a case by id (`in_scope`,
intake's access rules), pure."""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import Field, ValidationError

from contracts.common import Applicant, Code, Contract, Text, is_unstorable
from contracts.rest import DecisionRequest, WithdrawRequest
from services.common.auth import Principal, Role, in_scope
from services.common.web import CaseId, install_problem_handlers
from services.intake.domain import access

pytestmark = pytest.mark.unit

NUL, SURROGATE = "a\x00b", "a\ud800b"


class Note(Contract):
    title: Text = Field(max_length=10)
    body: Text | None = None
    tags: list[Annotated[Code, Field(max_length=8)]] = Field(default_factory=list)
    applicant: Applicant | None = None


@pytest.mark.parametrize("value", ["申请人撤回", "line one\nline two\ttab", "😀 emoji", ""])
def test_text_takes_any_storable_text(value: str) -> None:
    assert WithdrawRequest(reason=value).reason == value


@pytest.mark.parametrize("value", [NUL, SURROGATE, "\x00", "\udc00 low"])
def test_text_refuses_nul_and_unpaired_surrogates(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        WithdrawRequest(reason=value)
    (error,) = refused.value.errors()
    assert is_unstorable(error) and error["loc"] == ("reason",)


@pytest.mark.parametrize("value", [NUL, "A\nB", "A\rB", "A\x1bB", "A\x7fB", "A\x85B", SURROGATE])
def test_codes_refuse_every_control_character(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        DecisionRequest(department=value, decision="approve")
    assert all(is_unstorable(e) for e in refused.value.errors())
    assert DecisionRequest(department="YZ-市场 01", decision="approve").department == "YZ-市场 01"


def test_length_limits_keep_their_own_errors() -> None:
    with pytest.raises(ValidationError) as refused:
        Note(title="x" * 11, tags=["123456789"])
    assert sorted(e["type"] for e in refused.value.errors()) == [
        "string_too_long",
        "string_too_long",
    ]
    assert not any(is_unstorable(e) for e in refused.value.errors())


def app() -> FastAPI:
    api = FastAPI()
    install_problem_handlers(api)

    @api.post("/notes/{case_id}")
    async def note(
        case_id: CaseId,
        body: Note,
        department: Annotated[Code | None, Query(max_length=64)] = None,
    ) -> dict[str, str]:
        return {"case_id": case_id}

    return api


async def post(path: str, body: object, **params: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # json.dumps escapes NUL and lone surrogates, as a hostile client's JSON would.
        return await client.post(
            path,
            content=json.dumps(body),
            params=params,
            headers={"Content-Type": "application/json"},
        )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": NUL}, "title"),
        ({"title": SURROGATE}, "title"),
        ({"title": "ok", "body": SURROGATE}, "body"),
        ({"title": "ok", "tags": ["ok", "x\ny"]}, "tags.1"),
        (
            {
                "title": "ok",
                "applicant": {
                    "category": "individual",
                    "name": NUL,
                    "id_number": "1",
                    "division_code": "d",
                },
            },
            "applicant.name",
        ),
    ],
)
async def test_the_edge_answers_422_invalid_value_naming_the_field(
    body: dict[str, object], field: str
) -> None:
    answer = await post("/notes/C-1", body)
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "invalid_value"
    assert [(e["field"], e["type"]) for e in problem["errors"]] == [(field, "invalid_value")]
    assert NUL not in answer.text and "\\u0000" not in answer.text.split('"instance"')[0]


async def test_path_and_query_parameters_are_codes() -> None:
    nul_path = await post("/notes/C%001", {"title": "ok"})
    assert nul_path.json()["code"] == "invalid_value"
    assert nul_path.json()["errors"][0]["field"] == "path.case_id"
    query = await post("/notes/C-1", {"title": "ok"}, department="A\nB")
    assert query.json()["errors"][0]["field"] == "query.department"
    overlong = await post(f"/notes/{'C' * 65}", {"title": "ok"})
    assert overlong.status_code == 422 and overlong.json()["code"] == "invalid_request"
    fine = await post("/notes/C-1", {"title": "ok"}, department="YZ-MKT")
    assert fine.status_code == 200


async def test_other_errors_stay_invalid_request_unless_a_value_is_unstorable() -> None:
    missing = await post("/notes/C-1", {})
    assert missing.json()["code"] == "invalid_request"
    both = await post("/notes/C-1", {"title": "x" * 11, "body": NUL})
    assert both.json()["code"] == "invalid_value"
    assert {e["type"] for e in both.json()["errors"]} == {"string_too_long", "invalid_value"}


def test_in_scope_is_the_callers_own_office_or_department() -> None:
    clerk = Principal(subject="c", role=Role.clerk, scope="YZ01-DC")
    assert in_scope(clerk, "YZ01-DC") and not in_scope(clerk, "YZ02-DC")
    assert not in_scope(clerk, None)
    admin = Principal(subject="a", role=Role.admin)
    assert in_scope(admin, "anything") and not in_scope(admin, "anything", exempt=())


def test_intake_reads_cases_of_the_callers_office_or_department_only() -> None:
    clerk = Principal(subject="c", role=Role.clerk, scope="YZ01-DC")
    online = Principal(subject="o", role=Role.clerk, scope="online")
    reviewer = Principal(subject="r", role=Role.reviewer, scope="YZ-MKT")
    operator = Principal(subject="p", role=Role.operator)
    assert access.reads(clerk, "YZ01-DC", "counter", "YZ-MKT")
    assert not access.reads(clerk, "YZ02-DC", "counter", "YZ-MKT")
    assert access.reads(online, None, "online", "YZ-MKT")
    assert access.reads(reviewer, "YZ02-DC", "counter", "YZ-MKT")
    assert not access.reads(reviewer, "YZ01-DC", "counter", "YZ-HEALTH")
    assert access.reads(operator, "YZ02-DC", "counter", None)
    assert access.acts_for(clerk, "YZ01-DC", "counter")
    assert not access.acts_for(reviewer, "YZ01-DC", "counter")
    assert not access.acts_for(online, "YZ01-DC", "counter")
