"""A case at the counter: take a submission (reusing the applicant's e-licences, refused whole
with every fault listed), add materials, withdraw, read it on the audit trail. Taking is done
once per Idempotency-Key: the case, its first event and the key's answer in one transaction.
The bundle handlers take their members through the same `create_case`, and withdraw them
through the same `withdraw_case`."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Table, update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Item
from contracts.common import Application, CaseStatus, Channel, Handover, Material, Route
from contracts.events import (
    CaseNotified,
    CaseSubmitted,
    CaseSupplemented,
    CaseWithdrawn,
)
from contracts.rest import (
    BundleApplication,
    BundleSubmissionResponse,
    CaseView,
    LicensedMaterial,
    SubmissionResponse,
)
from services.common.db import unit_of_work
from services.common.handover import HandoverKeyError, HandoverKeys, load_keys, sign_handover
from services.common.logs import get_logger
from services.common.principals import Principal
from services.common.refusals import FieldError, Refused, refused
from services.common.rows import Guard, defer_guard, defer_rows
from services.common.service import ServiceRuntime
from services.intake import models, queries
from services.intake.domain import access, commitments, deferral
from services.intake.domain.licenses import (
    LibraryLicense,
    check_named_licenses,
    holder_key,
    reuse_licenses,
)
from services.intake.domain.lifecycle import RANK, WITHDRAWABLE
from services.intake.domain.validation import (
    ValidationResult,
    deferral_problem,
    deferred_codes,
    submission_refusal,
    supplement_refusal,
    validate_submission,
    with_refusals,
)
from services.intake.handlers.parts import Intake
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import missing_materials
from services.policy.partner_rules import catalog_of_applicant
from services.policy.routing_rules import route_case

log = get_logger(__name__)
# The answer of a submission taken once per Idempotency-Key: a case's, or a bundle's.
Answer = TypeVar("Answer", SubmissionResponse, BundleSubmissionResponse)


def new_case_id(city_code: str, today: date) -> str:
    return f"{city_code}-{today:%Y%m%d}-{secrets.token_hex(5).upper()}"


def request_hash(application: Application | BundleApplication) -> str:
    canonical = json.dumps(
        application.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def case_row(
    case_id: str,
    application: Application,
    status: CaseStatus,
    missing: list[str],
    at: datetime,
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "status": status.value,
        "status_rank": RANK[status],
        "item_code": application.item_code,
        "channel": application.channel.value,
        "office_code": application.office_code,
        "application": application.model_dump(mode="json"),
        "missing_materials": missing,
        "deferred_materials": deferral.deferred_rows(deferred_codes(application.materials)),
        "created_at": at,
        "updated_at": at,
    }


def submission_handover(
    *, case_id: str, application: Application, submitted_at: datetime, keys: HandoverKeys
) -> Handover | None:
    """A counter submission carries its office's signed handover (DESIGN.md §1); the online
    channel has none. No key for the office: refused, nothing unsigned leaves a counter."""
    if application.channel is not Channel.counter or application.office_code is None:
        return None
    try:
        return sign_handover(
            case_id=case_id,
            application=application,
            office_code=application.office_code,
            signed_at=submitted_at,
            keys=keys,
        )
    except HandoverKeyError as exc:
        raise refused(
            503,
            "handover_key_missing",
            "This office cannot sign handovers yet",
            f"Office {application.office_code} has no handover signing key; an administrator "
            "must install it (tongban handover-keys generate).",
            retry_after=60,  # an administrator's step, not a passing moment
        ) from exc


def route_preview(
    intake: Intake,
    index: CatalogIndex,
    application: Application,
    today: date,
    *,
    bundle_code: str | None = None,
) -> Route | None:
    """The routing rules of `services.policy` (pure, the very code routing decides by) on this
    process's copy of the catalog: the same answer routing will give, at no network cost, and
    never a reason to keep a person waiting at the counter."""
    version = intake.catalogs.latest_version
    if version is None:
        return None
    try:
        outcome = route_case(
            index,
            catalog_version=version,
            application=application,
            submitted_on=today,
            bundle_code=bundle_code,
            partners=intake.partner_indexes(),
        )
    except Exception as exc:  # a preview is a nicety: the case is taken anyway
        log.warning("route preview failed", error=repr(exc))
        return None
    return outcome.route


async def submit(
    intake: Intake,
    application: Application,
    *,
    idempotency_key: str | None,
    traceparent: str | None = None,
) -> SubmissionResponse:
    """Take an application: refused whole, every fault listed (`domain.validation`), or stored
    as a case with its first event and its Idempotency-Key in one transaction. A key used
    before with the same body answers that submission again, even when the catalog has changed
    since; with another body, 409 `idempotency_key_reused`.

    Raises `KeyAlreadyUsed` when the key is stored but its answer cannot be read back (keys are
    never deleted: only if the database lost the row)."""
    digest = request_hash(application)
    index = queries.catalog_in_force(intake.catalogs)
    today = intake.runtime.clock.today()
    # An applicant of a partner region: the item code is read in that region's catalog (§9).
    partner = catalog_of_applicant(
        index, intake.partner_catalogs(), application.applicant.division_code
    )
    item = (partner or index).items.get(application.item_code)
    library, barred = await library_and_bar(intake, application, [item] if item else None)
    # Held e-licences satisfy their materials before anything is found missing (免提交).
    reuse = reuse_licenses(item, application, library)
    application = reuse.application
    committed = commitments.commitment_refusals(item, application.materials, barred=barred)
    result = with_refusals(
        validate_submission(index, application, today=today, partner=partner),
        reuse.refusals + committed,
    )
    if not result.ok:
        # A retry of a case taken before the catalog changed still gets its case back.
        replay = await replay_answer(intake, idempotency_key, digest, queries.replay_idempotent)
        if replay is not None:
            return replay
        raise Refused(submission_refusal(result))
    preview = None if result.missing_materials else route_preview(intake, index, application, today)
    case_id = new_case_id(index.catalog.city.code, today)
    return await take_once(
        intake,
        idempotency_key,
        digest,
        queries.replay_idempotent,
        lambda session: create_case(
            session,
            runtime=intake.runtime,
            application=application,
            case_id=case_id,
            missing=list(result.missing_materials),
            route_preview=preview,
            idempotency_key=idempotency_key or None,
            digest=digest,
            handover_keys=load_keys(intake.runtime.settings),
            traceparent=traceparent,
            reused=reuse.reused,
        ),
    )


async def library_and_bar(
    intake: Intake, application: Application | BundleApplication, items: Sequence[Item] | None
) -> tuple[list[LibraryLicense], bool]:
    """The licences a submission may reuse or names, and whether its applicant is barred from
    commitments. Only a submission the library or the bar can change reads them: most items
    take no licence, most applicants commit to nothing, and this runs before every one."""
    library: list[LibraryLicense] = []
    barred = False
    takes_licences = any(m.license_type for item in items or () for m in item.materials)
    names_licences = any(m.e_license_id for m in application.materials)
    commits = commitments.commits(application.materials)
    if takes_licences or names_licences or commits:
        async with intake.runtime.sessions() as session:
            if takes_licences or names_licences:
                library = await queries.library_for(session, application)
            if commits:
                barred = await queries.commitment_barred(session, application.applicant.id_number)
    return library, barred


class KeyAlreadyUsed(Exception):
    """The Idempotency-Key belongs to a submission already taken (a retry, or a retry that
    raced this one): roll this transaction back and answer with the stored submission."""


StoredAnswer = Callable[[AsyncSession, str, str], Awaitable[Answer | None]]


async def take_once(
    intake: Intake,
    idempotency_key: str | None,
    digest: str,
    stored: StoredAnswer[Answer],
    take: Callable[[AsyncSession], Awaitable[Answer]],
) -> Answer:
    """`take` (a case or a bundle, with its key's answer) in one transaction. A key already
    stored (a retry) is found by the key's own insert, the guard of the statement that writes
    the case, its outbox rows and the key together (`store_key`): nothing is written, and the
    stored answer is given instead. No read of the key before every submission, and a single
    case is that one statement: one round trip, no BEGIN or COMMIT."""
    try:
        async with unit_of_work(intake.runtime.sessions) as session:
            return await take(session)
    except KeyAlreadyUsed:
        replay = await replay_answer(intake, idempotency_key, digest, stored)
        if replay is None:
            raise
        return replay


async def replay_answer(
    intake: Intake, idempotency_key: str | None, digest: str, stored: StoredAnswer[Answer]
) -> Answer | None:
    """The answer stored with the key for this body (`stored`: of a case or of a bundle)."""
    if not idempotency_key:
        return None
    async with intake.runtime.sessions() as session:
        return await stored(session, idempotency_key, digest)


def store_key(
    session: AsyncSession,
    keys: Table,
    key: str,
    digest: str,
    response: BaseModel,
    **taken: str,
) -> None:
    """Store the key with the answer of what it took (`case_id=` or `bundle_id=`), as the
    guard of the unit of work's rows (`rows.defer_guard`): a key stored already (a retry, or a
    retry that raced this one) writes none of them and raises `KeyAlreadyUsed`."""
    row = {"key": key, "request_hash": digest, "response": response.model_dump(mode="json")}
    defer_guard(session, Guard(keys, row | taken, lambda: KeyAlreadyUsed(key)))


async def create_case(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    application: Application,
    case_id: str,
    missing: list[str],
    route_preview: Any,
    idempotency_key: str | None,
    digest: str,
    handover_keys: HandoverKeys,
    traceparent: str | None = None,
    reused: Sequence[LicensedMaterial] = (),
    member: BundleMembership | None = None,
) -> SubmissionResponse:
    """The case, its first event (notified or submitted, carrying the application with every
    e-licence attached) and the stored answer of its Idempotency-Key. A member of a bundle
    carries its bundle on the row and the event; one that waits for other members (`after`)
    is stored `waiting`, with no event yet (it is submitted when they are approved)."""
    now = runtime.clock.now()
    waits = member is not None and bool(member.after)
    status = (
        CaseStatus.waiting
        if waits
        else CaseStatus.awaiting_supplement
        if missing
        else CaseStatus.submitted
    )
    row = case_row(case_id, application, status, missing, now)
    if member is not None:
        row |= member.columns()
    # Written with its outbox rows and its key at the end, in one statement (`take_once`).
    defer_rows(session, models.cases, [row])
    deferred = deferred_codes(application.materials)
    if not waits:
        await emit_first_event(
            session,
            runtime=runtime,
            case_id=case_id,
            application=application,
            missing=missing,
            member=member,
            keys=handover_keys,
            traceparent=traceparent,
        )
    response = SubmissionResponse(
        case_id=case_id,
        status=status,
        missing_materials=missing,
        route_preview=route_preview,
        deferred_materials=deferral.deferred_view(deferral.deferred_rows(deferred), None),
        reused_licenses=list(reused),
    )
    if idempotency_key is not None:
        store_key(
            session, models.idempotency_keys, idempotency_key, digest, response, case_id=case_id
        )
    return response


@dataclass(frozen=True, slots=True)
class BundleMembership:
    """A case that is a member of a bundle (§8): its bundle, and the members it waits for."""

    bundle_id: str
    bundle_code: str
    after: tuple[str, ...] = ()

    def columns(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "bundle_code": self.bundle_code,
            "after": list(self.after),
        }

    @classmethod
    def of(cls, case: Any) -> BundleMembership | None:
        """The membership stored on a case row (None for a single case)."""
        if case.bundle_id is None:
            return None
        return cls(case.bundle_id, case.bundle_code or "", tuple(case.after or ()))


async def emit_first_event(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    case_id: str,
    application: Application,
    missing: Sequence[str],
    member: BundleMembership | None,
    keys: HandoverKeys,
    traceparent: str | None = None,
) -> None:
    """A case's first event: the one-time notification of what is missing, or its submission
    with the office's signed handover; a member's names its bundle."""
    now = runtime.clock.now()
    bundle = (
        {"bundle_id": member.bundle_id, "bundle_code": member.bundle_code}
        if member is not None
        else {}
    )
    if missing:
        await runtime.emit(
            session,
            CaseNotified(
                case_id=case_id,
                application=application,
                missing_materials=list(missing),
                notified_at=now,
                deferred_materials=deferred_codes(application.materials),
                **bundle,
            ),
            traceparent=traceparent,
        )
        return
    handover = submission_handover(
        case_id=case_id, application=application, submitted_at=now, keys=keys
    )
    await runtime.emit(
        session,
        CaseSubmitted(
            case_id=case_id,
            application=application,
            submitted_at=now,
            handover=handover,
            **bundle,
        ),
        traceparent=traceparent,
    )


async def add_materials(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    case_id: str,
    materials: list[Material],
    index: CatalogIndex,
    partners: Mapping[str, CatalogIndex] | None = None,
) -> SubmissionResponse:
    """Supplement materials, by a clerk of the office that took the case: completes a counter
    case (awaiting_supplement), answers a review's request (supplement_requested), which
    needs every requested material at once, or brings deferred materials after acceptance
    (容缺受理: `domain.deferral`). The item is read in the applicant's region's catalog (§9)."""
    case = await queries.case_of_the_office(session, case_id, principal, lock=True)
    application = Application.model_validate(case.application)
    partner = catalog_of_applicant(index, partners or {}, application.applicant.division_code)
    item = (partner or index).items.get(case.item_code)
    if item is not None:
        unknown = supplement_refusal(item, (m.code for m in materials))
        if unknown is not None:
            raise Refused(unknown)
        await _check_named_licenses(session, item, application, materials)
        await _check_commitments(session, item, application, materials)
    status = CaseStatus(case.status)
    _check_deferrals(case_id, status, item, materials)
    owed = deferral.outstanding(case.deferred_materials)
    given_codes = [m.code for m in materials]
    now = runtime.clock.now()
    merged = {m.code: m for m in application.materials} | {m.code: m for m in materials}
    application = application.model_copy(update={"materials": list(merged.values())})
    missing, new_status = _next_status(
        case, status, item=item, merged=merged, given=given_codes, owed=owed
    )
    deferred_now = (
        deferral.deferred_rows(deferred_codes(application.materials))
        if status is CaseStatus.awaiting_supplement  # not submitted yet: still the submission's
        else deferral.mark_received(case.deferred_materials, given_codes)
    )
    member = BundleMembership.of(case)
    await runtime.emit(
        session,
        CaseSupplemented(
            case_id=case_id,
            materials=materials,
            supplemented_at=now,
            bundle_id=case.bundle_id,
        ),
    )
    if new_status is CaseStatus.submitted:  # the counter case is complete: it goes on
        await emit_first_event(
            session,
            runtime=runtime,
            case_id=case_id,
            application=application,
            missing=(),
            member=member,
            keys=load_keys(runtime.settings),
        )
    await update_case(
        session,
        case_id,
        {
            "status": new_status.value,
            "status_rank": RANK[new_status],
            "missing_materials": missing,
            "application": application.model_dump(mode="json"),
            "deferred_materials": deferred_now,
        },
        now=now,
    )
    return SubmissionResponse(
        case_id=case_id,
        status=new_status,
        missing_materials=missing,
        route_preview=None,
        deferred_materials=deferral.deferred_view(deferred_now, case.deferred_due),
    )


def _next_status(
    case: Any,
    status: CaseStatus,
    *,
    item: Any,
    merged: dict[str, Material],
    given: list[str],
    owed: list[str],
) -> tuple[list[str], CaseStatus]:
    """What materials brought now leave missing, and the status they move the case to: a
    counter case completed (awaiting_supplement), a review's request answered at once
    (supplement_requested), or deferred materials brought late; refused otherwise."""
    if status is CaseStatus.awaiting_supplement:
        missing = (
            list(missing_materials(item, merged))
            if item is not None
            else [code for code in case.missing_materials if code not in merged]
        )
        return missing, (CaseStatus.awaiting_supplement if missing else CaseStatus.submitted)
    if status is CaseStatus.supplement_requested:
        missing = [code for code in case.missing_materials if code not in set(given)]
        if missing:
            raise refused(
                422,
                "materials_incomplete",
                "Every requested material is needed at once",
                f"Still missing: {', '.join(missing)}. Send them together.",
                errors=tuple(FieldError("materials", f"missing {code}") for code in missing),
                missing_materials=missing,
            )
        return missing, CaseStatus.accepted
    if deferral.takes_late_materials(status, given, owed):
        return list(case.missing_materials), status
    owes = f" It owes the deferred {', '.join(owed)}." if owed else ""
    raise refused(
        409,
        "invalid_state",
        "This case is not waiting for materials",
        f"Case {case.case_id} is {status.value}; materials are taken while it is "
        "awaiting_supplement or supplement_requested, and deferred ones once it is "
        f"accepted.{owes}",
        status_now=status.value,
    )


def _check_deferrals(
    case_id: str, status: CaseStatus, item: Any, materials: Sequence[Material]
) -> None:
    """`deferred: true` in a materials request: only before the case is submitted (the
    submission's own choice), and only on a deferrable material."""
    deferred = [m.code for m in materials if m.deferred]
    if not deferred:
        return
    if status is not CaseStatus.awaiting_supplement:
        raise refused(
            422,
            "deferral_not_allowed",
            "This material cannot be deferred",
            f"Case {case_id} is {status.value}: materials are deferred at submission only.",
            errors=tuple(FieldError("materials", f"{code} deferred") for code in deferred),
        )
    problems = [why for code in deferred if item and (why := deferral_problem(item, code))]
    if problems:
        raise refused(
            422,
            "deferral_not_allowed",
            "This material cannot be deferred",
            " ".join(problems),
            errors=tuple(FieldError("materials", why) for why in problems),
        )


async def _check_named_licenses(
    session: AsyncSession, item: Item, application: Application, materials: list[Material]
) -> None:
    """A supplement naming an e-licence is held to the rules of a submission: 422
    `invalid_license` for every one that is unknown, another holder's, revoked or of the wrong
    type, and nothing of the supplement is taken."""
    library = await queries.library_for(session, application, materials)
    holder = holder_key(application.applicant.id_number)
    _usable, refusals = check_named_licenses(item, holder, materials, library)
    if refusals:
        raise Refused(submission_refusal(ValidationResult(refusals=refusals)))


async def _check_commitments(
    session: AsyncSession, item: Item, application: Application, materials: list[Material]
) -> None:
    """A supplement committing to a material is held to the rules of a submission: 422
    `commitment_not_allowed` where the material takes none or the applicant is barred."""
    if not commitments.commits(materials):
        return
    barred = await queries.commitment_barred(session, application.applicant.id_number)
    refusals = commitments.commitment_refusals(item, materials, barred=barred)
    if refusals:
        raise Refused(submission_refusal(ValidationResult(refusals=refusals)))


async def withdraw(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    case_id: str,
    reason: str | None,
) -> CaseStatus:
    """Withdraw before the decision, by a clerk of the office that took the case."""
    case = await queries.case_of_the_office(session, case_id, principal, lock=True)
    status = CaseStatus(case.status)
    if status not in WITHDRAWABLE:
        raise refused(
            409,
            "invalid_state",
            "The case can no longer be withdrawn",
            f"Case {case_id} is {status.value}; withdrawal is possible only before a decision.",
            status_now=status.value,
        )
    await withdraw_case(
        session,
        runtime,
        case_id,
        bundle_id=case.bundle_id,
        reason=reason,
        now=runtime.clock.now(),
    )
    return CaseStatus.withdrawn


async def withdraw_case(
    session: AsyncSession,
    runtime: ServiceRuntime,
    case_id: str,
    *,
    bundle_id: str | None,
    reason: str | None,
    now: datetime,
) -> None:
    """The case withdrawn: `gov.case.withdrawn.v1` (naming its bundle, for a member) and its
    row, whether the applicant withdrew it, its bundle, or a prerequisite that ended."""
    await runtime.emit(
        session,
        CaseWithdrawn(case_id=case_id, reason=reason, withdrawn_at=now, bundle_id=bundle_id),
    )
    await update_case(
        session,
        case_id,
        {"status": CaseStatus.withdrawn.value, "status_rank": RANK[CaseStatus.withdrawn]},
        now=now,
    )


async def update_case(
    session: AsyncSession, case_id: str, changes: dict[str, Any], *, now: datetime
) -> None:
    """The case row's `changes` (columns of `models.cases`), as of `now`."""
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(**changes, updated_at=now)
    )


async def read_case(runtime: ServiceRuntime, case_id: str, principal: Principal) -> CaseView:
    """The case as the caller may see it, on the audit trail: every read is recorded, with
    whether the applicant's personal data was shown clear or masked."""
    async with runtime.sessions() as session:
        case, timeline = await queries.readable_case(session, case_id, principal)
    clear = access.sees_personal_data(principal)
    # The audit trail's chain is appended under its lock in a transaction of its own (a
    # REPEATABLE READ snapshot could predate the chain's tail); no view leaves unaudited.
    async with unit_of_work(runtime.sessions) as session:
        await runtime.audit(
            session,
            principal,
            "case.read",
            case_id,
            {"personal_data": "clear" if clear else "masked"},
        )
    return queries.case_view(case, timeline, clear=clear)
