"""intake's REST routes: parse, check the caller's role, call a handler or a query. Refusals
become problem JSON at this edge (services.common.refusals)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request

from contracts.common import Code
from contracts.rest import (
    AdoptionRefusalView,
    BundleApplication,
    BundleCatalogView,
    BundleSubmissionResponse,
    BundleView,
    BundleWithdrawResponse,
    CaseView,
    HeldLicense,
    ItemView,
    MaterialsRequest,
    PartnerView,
    SubmissionRequest,
    SubmissionResponse,
    WithdrawRequest,
)
from services.common.auth import CurrentPrincipal
from services.common.db import unit_of_work
from services.common.limits import rate_limited
from services.common.principals import Role, require
from services.common.service import service_parts
from services.common.web import CaseId, dependency_unavailable, errors
from services.intake import handlers, queries
from services.intake.domain import access
from services.intake.handlers import Intake

IntakeDep = Annotated[Intake, Depends(service_parts)]
Taken = TypeVar("Taken")
router = APIRouter()


async def _rate_limited(request: Request, intake: IntakeDep, _: CurrentPrincipal) -> None:
    """Per client (token subject, so authentication comes first): a counter terminal stuck in
    a loop must not starve the others."""
    await rate_limited(intake.limiter)(request)


@router.post(
    "/v1/cases",
    status_code=201,
    tags=["cases"],
    dependencies=[Depends(_rate_limited)],
    # OpenAPI links: what a client (or a stateful test) can do next with the new case.
    responses={
        **errors(400, 401, 403, 409, 413, 422, 429, 503),
        201: {
            "links": {
                name: {
                    "operationId": operation,
                    "parameters": {"case_id": "$response.body#/case_id"},
                }
                for name, operation in (
                    ("GetCase", "get_case_v1_cases__case_id__get"),
                    ("AddMaterials", "add_materials_v1_cases__case_id__materials_post"),
                    ("Withdraw", "withdraw_v1_cases__case_id__withdraw_post"),
                )
            }
        },
    },
)
async def submit(
    application: SubmissionRequest,
    request: Request,
    principal: CurrentPrincipal,
    intake: IntakeDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> SubmissionResponse:
    """Take an application (clerks, at their own office; the online channel's scope is
    `online`). Missing required materials: the case waits as `awaiting_supplement` with one
    notification listing all of them."""
    access.may_submit(principal, application)
    return await _taken_once(
        handlers.submit(
            intake,
            application,
            idempotency_key=idempotency_key,
            traceparent=request.headers.get("traceparent"),
        )
    )


async def _taken_once(taking: Awaitable[Taken]) -> Taken:
    """A submission under an Idempotency-Key whose stored answer cannot be read back (only if
    the database lost the row): 503, try again, rather than a second case or bundle."""
    try:
        return await taking
    except handlers.KeyAlreadyUsed:
        raise dependency_unavailable() from None


@router.get(
    "/v1/cases/{case_id}",
    tags=["cases"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_case(case_id: CaseId, principal: CurrentPrincipal, intake: IntakeDep) -> CaseView:
    """Status, route, deadline and the whole timeline from every case topic. Clerks read their
    office's cases, reviewers their department's; operators and admins read every case with
    the applicant's personal data masked. Every read is on the audit trail."""
    return await handlers.read_case(intake.runtime, case_id, principal)


@router.post(
    "/v1/cases/{case_id}/materials",
    tags=["cases"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def add_materials(
    case_id: CaseId, body: MaterialsRequest, principal: CurrentPrincipal, intake: IntakeDep
) -> SubmissionResponse:
    """Supplement materials: completes a counter case, answers a review's request, or brings
    deferred materials (容缺受理) once the case is accepted."""
    access.may_act(principal)
    index = queries.catalog_in_force(intake.catalogs)
    async with unit_of_work(intake.runtime.sessions) as session:
        return await handlers.add_materials(
            session,
            runtime=intake.runtime,
            principal=principal,
            case_id=case_id,
            materials=list(body.materials),
            index=index,
            partners=intake.partner_catalogs(),
        )


@router.post(
    "/v1/cases/{case_id}/withdraw",
    tags=["cases"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def withdraw(
    case_id: CaseId,
    principal: CurrentPrincipal,
    intake: IntakeDep,
    body: WithdrawRequest | None = None,
) -> CaseView:
    """Withdraw before the decision, at the office that took the case."""
    access.may_act(principal)
    async with unit_of_work(intake.runtime.sessions) as session:
        await handlers.withdraw(
            session,
            runtime=intake.runtime,
            principal=principal,
            case_id=case_id,
            reason=body.reason if body else None,
        )
    return await handlers.read_case(intake.runtime, case_id, principal)


@router.get("/v1/items", tags=["catalog"], responses=errors(401, 404, 422, 503))
async def items(
    principal: CurrentPrincipal,
    intake: IntakeDep,
    city: Annotated[
        Code | None,
        Query(
            max_length=32,
            description="a partner region's city code: its cross_region items in force, which "
            "a counter here takes for its applicants (DESIGN.md §9)",
        ),
    ] = None,
) -> list[ItemView]:
    """The catalog items in force (intake's copy of the newest catalog version); with `city`
    of a partner region, that region's cross_region items in force."""
    index = queries.catalog_in_force(intake.catalogs)
    if city is None or city == index.city_code:
        return queries.items(index)
    partner = queries.partner_of(intake.partner_catalogs(), city)
    return queries.partner_items(partner, intake.runtime.clock.today())


@router.get("/v1/partners", tags=["catalog"], responses=errors(401, 503))
async def partners(principal: CurrentPrincipal, intake: IntakeDep) -> list[PartnerView]:
    """The partner regions known here (跨省通办, DESIGN.md §9), by their catalogs mirrored here:
    city code, name, catalog version and how many cross_region items a counter here takes."""
    return queries.partners(
        intake.partner_catalogs(), intake.partner_versions(), intake.runtime.clock.today()
    )


@router.get("/v1/xregion/refused", tags=["operators"], responses=errors(401, 403, 422, 503))
async def refused_adoptions(
    principal: CurrentPrincipal,
    intake: IntakeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AdoptionRefusalView]:
    """Cases partner regions forwarded here that were not adopted (a handover that does not
    verify, an item not offered across regions...), newest first: operators follow them up
    with the origin region, whose case waits in its triage queue (operators and admins)."""
    require(principal, Role.operator, Role.admin)
    async with intake.runtime.sessions() as session:
        return await queries.refused_adoptions(session, limit=limit)


@router.get(
    "/v1/licenses",
    response_model=list[HeldLicense],
    tags=["licenses"],
    responses=errors(401, 403, 422, 503),
)
async def licenses(
    holder: Annotated[
        Code, Query(min_length=1, max_length=64, description="the holder's ID number")
    ],
    principal: CurrentPrincipal,
    intake: IntakeDep,
) -> list[HeldLicense]:
    """The licence library (电子证照): the e-licences a holder holds, newest first, with their
    status (`valid` | `revoked`). A clerk sees the licences of the applicants of their own
    office's cases (the online channel: of its own cases); for anyone else the list is empty,
    as for a holder with none. Operators and admins see every holder, the ID number masked;
    reviewers get 403. Every read is on the audit trail."""
    access.library_scope(principal)  # the role first: 403 whoever the holder is
    return await handlers.read_licenses(intake.runtime, holder, principal)


# -- bundles (一件事一次办, DESIGN.md §8) ----------------------------------------------------------

BundleId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("/v1/bundles", tags=["bundles"], responses=errors(401, 503))
async def bundle_catalog(principal: CurrentPrincipal, intake: IntakeDep) -> list[BundleCatalogView]:
    """The bundles offered today with their questions (情形引导), members and the union of their
    materials (which member items take each): what a counter terminal needs for the one form."""
    index = queries.catalog_in_force(intake.catalogs)
    return queries.bundle_catalog(index, intake.runtime.clock.today())


@router.post(
    "/v1/bundles",
    status_code=201,
    tags=["bundles"],
    dependencies=[Depends(_rate_limited)],
    responses=errors(400, 401, 403, 409, 413, 422, 429, 503),
)
async def submit_bundle(
    application: BundleApplication,
    request: Request,
    principal: CurrentPrincipal,
    intake: IntakeDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> BundleSubmissionResponse:
    """Take a bundle at one window (clerks, at their own office; the online channel's scope is
    `online`): one form, one set of materials. Its members the answers create are ordinary
    cases, each routed on its own; a member that waits for others is `waiting`. Refusals as
    for a case, plus `unknown_bundle`, `bundle_not_effective`, `invalid_answers`."""
    access.may_submit_bundle(principal, application)
    return await _taken_once(
        handlers.submit_bundle(
            intake,
            application,
            idempotency_key=idempotency_key,
            traceparent=request.headers.get("traceparent"),
        )
    )


@router.get(
    "/v1/bundles/{bundle_id}",
    tags=["bundles"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_bundle(
    bundle_id: BundleId, principal: CurrentPrincipal, intake: IntakeDep
) -> BundleView:
    """Status, members (with their routes and statuses), the bundle's deadline and one
    timeline of the bundle's and its members' events. Read as a case is, on the audit trail."""
    return await handlers.read_bundle(intake, bundle_id, principal)


@router.post(
    "/v1/bundles/{bundle_id}/withdraw",
    tags=["bundles"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def withdraw_bundle(
    bundle_id: BundleId,
    principal: CurrentPrincipal,
    intake: IntakeDep,
    body: WithdrawRequest | None = None,
) -> BundleWithdrawResponse:
    """Withdraw the bundle at the office that took it: every undecided member (waiting ones
    too) is withdrawn; decided members are kept and their results still come."""
    access.may_act(principal)
    async with unit_of_work(intake.runtime.sessions) as session:
        return await handlers.withdraw_bundle(
            session,
            runtime=intake.runtime,
            principal=principal,
            bundle_id=bundle_id,
            reason=body.reason if body else None,
        )


@router.post(
    "/v1/bundles/{bundle_id}/materials",
    tags=["bundles"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def add_bundle_materials(
    bundle_id: BundleId, body: MaterialsRequest, principal: CurrentPrincipal, intake: IntakeDep
) -> BundleSubmissionResponse:
    """One set of materials for the bundle, spread over the members that take each code and
    still wait for materials (completing `awaiting_supplement` members)."""
    access.may_act(principal)
    index = queries.catalog_in_force(intake.catalogs)
    async with unit_of_work(intake.runtime.sessions) as session:
        return await handlers.add_bundle_materials(
            session,
            runtime=intake.runtime,
            principal=principal,
            bundle_id=bundle_id,
            materials=list(body.materials),
            index=index,
        )
