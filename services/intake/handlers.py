"""intake's event handlers and commands: take a submission (reusing the applicant's
e-licences), add materials, withdraw, read a case on the audit trail, follow every case topic
into the counter's view of the case (status, route, deadline, timeline), and keep intake's copy
of the licence library (`license.v1`). Plain functions over a session and the process's parts
(`Intake`); a refused command raises `Refused` (services.common.refusals); reads are in
`queries`."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Table, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Catalog, Item
from contracts.common import Application, CaseStatus, Channel, Handover, Material, Route
from contracts.events import (
    BundleClosed,
    BundleDelivered,
    BundleMemberRef,
    BundleSubmitted,
    BundleWithdrawn,
    CaseNotified,
    CaseSubmitted,
    CaseSupplemented,
    CaseWithdrawn,
    CatalogPublished,
    LicenseIssued,
    LicenseRevoked,
)
from contracts.rest import (
    BundleApplication,
    BundleMemberPreview,
    BundleStatus,
    BundleSubmissionResponse,
    BundleView,
    BundleWithdrawResponse,
    CaseView,
    HeldLicense,
    LicensedMaterial,
    SubmissionResponse,
)
from services.common.catalog_follower import CatalogFollower
from services.common.clock import ServiceClock
from services.common.db import inbox_key, unit_of_work
from services.common.envelope import Envelope
from services.common.handover import HandoverKeyError, HandoverKeys, load_keys, sign_handover
from services.common.limits import RateLimiter
from services.common.logs import get_logger, mask_id_number
from services.common.principals import Principal
from services.common.refusals import FieldError, Refused, refused
from services.common.service import ServiceRuntime
from services.intake import models, queries
from services.intake.domain import access, bundles, commitments, deferral
from services.intake.domain.licenses import (
    LibraryLicense,
    check_named_licenses,
    holder_key,
    reuse_licenses,
)
from services.intake.domain.lifecycle import RANK, WITHDRAWABLE, case_changes
from services.intake.domain.validation import (
    ValidationResult,
    deferral_problem,
    deferred_codes,
    submission_refusal,
    supplement_refusal,
    validate_submission,
    with_refusals,
)
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import missing_materials
from services.policy.routing_rules import route_case

log = get_logger(__name__)


@dataclass(frozen=True)
class Intake:
    """The parts of one intake process (built by `app.create_app`): its runtime, its copy of
    the catalog, and the per-client rate limiter of submissions."""

    runtime: ServiceRuntime
    catalogs: CatalogFollower[CatalogIndex]
    limiter: RateLimiter


def build_index(published: CatalogPublished) -> CatalogIndex:
    return CatalogIndex(Catalog.model_validate(published.catalog))


async def check_handover_keys(intake: Intake) -> None:
    """Fail at startup, with what to set, when production has no signing keys."""
    load_keys(intake.runtime.settings)


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
    item = index.items.get(application.item_code)
    library, barred = await _library_and_bar(intake, application, [item] if item else None)
    # Held e-licences satisfy their materials before anything is found missing (免提交).
    reuse = reuse_licenses(item, application, library)
    application = reuse.application
    committed = commitments.commitment_refusals(item, application.materials, barred=barred)
    result = with_refusals(
        validate_submission(index, application, today=today), reuse.refusals + committed
    )
    if not result.ok:
        # A retry of a case taken before the catalog changed still gets its case back.
        replay = await _replay(intake, idempotency_key, digest)
        if replay is not None:
            return replay
        raise Refused(submission_refusal(result))
    preview = None if result.missing_materials else route_preview(intake, index, application, today)
    case_id = new_case_id(index.catalog.city.code, today)
    try:
        # One transaction: the case, its events, the key. A key already stored (a retry) is
        # found by the key's own insert, which rolls the whole transaction back: no read of
        # the key before every submission.
        async with unit_of_work(intake.runtime.sessions) as session:
            return await create_case(
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
            )
    except KeyAlreadyUsed:
        replay = await _replay(intake, idempotency_key, digest)
        if replay is None:
            raise
        return replay


async def _library_and_bar(
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


async def _replay(
    intake: Intake, idempotency_key: str | None, digest: str
) -> SubmissionResponse | None:
    if not idempotency_key:
        return None
    async with intake.runtime.sessions() as session:
        return await queries.replay_idempotent(session, idempotency_key, digest)


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
    await session.execute(models.cases.insert().values(row))
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
        await _store_key(
            session, models.idempotency_keys, idempotency_key, digest, response, case_id=case_id
        )
    return response


async def _store_key(
    session: AsyncSession,
    keys: Table,
    key: str,
    digest: str,
    response: BaseModel,
    **taken: str,
) -> None:
    """Store the key with the answer of what it took (`case_id=` or `bundle_id=`); a key stored
    already (a retry, or a retry that raced this one) raises `KeyAlreadyUsed`."""
    stored = await session.execute(
        pg_insert(keys)
        .values(key=key, request_hash=digest, response=response.model_dump(mode="json"), **taken)
        .on_conflict_do_nothing()
        .returning(keys.c.key)
    )
    if stored.scalar() is None:
        raise KeyAlreadyUsed(key)


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


class KeyAlreadyUsed(Exception):
    """The Idempotency-Key belongs to a submission already taken (a retry, or a retry that
    raced this one): roll this transaction back and answer with the stored submission."""


async def add_materials(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    case_id: str,
    materials: list[Material],
    index: CatalogIndex,
) -> SubmissionResponse:
    """Supplement materials, by a clerk of the office that took the case: completes a counter
    case (awaiting_supplement), answers a review's request (supplement_requested), which
    needs every requested material at once, or brings deferred materials after acceptance
    (容缺受理: `domain.deferral`)."""
    case = await queries.case_of_the_office(session, case_id, principal, lock=True)
    item = index.items.get(case.item_code)
    application = Application.model_validate(case.application)
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
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(
            status=new_status.value,
            status_rank=RANK[new_status],
            missing_materials=missing,
            application=application.model_dump(mode="json"),
            deferred_materials=deferred_now,
            updated_at=now,
        )
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
    now = runtime.clock.now()
    await runtime.emit(
        session,
        CaseWithdrawn(case_id=case_id, reason=reason, withdrawn_at=now, bundle_id=case.bundle_id),
    )
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(
            status=CaseStatus.withdrawn.value,
            status_rank=RANK[CaseStatus.withdrawn],
            updated_at=now,
        )
    )
    return CaseStatus.withdrawn


async def read_licenses(
    runtime: ServiceRuntime, holder: str, principal: Principal
) -> list[HeldLicense]:
    """The licences a holder holds, as the caller may see them, on the audit trail (a read of
    personal data: whose licences, clear or masked)."""
    holder = holder_key(holder)
    async with runtime.sessions() as session:
        licenses = await queries.held_licenses(session, holder, principal)
    async with unit_of_work(runtime.sessions) as session:
        await runtime.audit(
            session,
            principal,
            "licenses.read",
            None,
            {
                "holder": mask_id_number(holder),
                "licenses": len(licenses),
                "personal_data": "clear" if access.sees_personal_data(principal) else "masked",
            },
        )
    return licenses


# -- consumer: license.v1 (intake's copy of the licence library) --------------------------------


async def record_license_issued(
    session: AsyncSession,
    envelope: Envelope,
    issued: LicenseIssued,
    *,
    intake: Intake | None = None,
) -> None:
    """An e-licence issued (delivery): into the library. A revocation that came first stays
    (the row keeps its `revoked_at`); a second copy of the issue changes nothing new."""
    values = {
        "license_type": issued.license_type,
        "holder_id_number": holder_key(issued.holder_id_number),
        "case_id": issued.case_id,
        "item_code": issued.item_code,
        "issued_at": issued.issued_at,
        "sha256": issued.sha256,
    }
    statement = pg_insert(models.licenses).values(license_id=issued.license_id, **values)
    await session.execute(
        statement.on_conflict_do_update(index_elements=[models.licenses.c.license_id], set_=values)
    )
    # A prerequisite's licence may be what a waiting member of its bundle waits for (§8).
    index = intake.catalogs.latest if intake is not None else None
    if intake is not None and index is not None:
        bundle_id = await queries.bundle_of_case(session, issued.case_id)
        if bundle_id is not None:
            await settle_bundle(session, runtime=intake.runtime, index=index, bundle_id=bundle_id)


async def record_license_revoked(
    session: AsyncSession, envelope: Envelope, revoked: LicenseRevoked
) -> None:
    """An e-licence revoked: marked in the library, whether or not its issue is here yet (the
    issue arriving later fills in the rest and leaves it revoked); the first revocation's time
    and reason stay."""
    revoked_at = revoked.revoked_at or envelope.time
    statement = pg_insert(models.licenses).values(
        license_id=revoked.license_id,
        case_id=revoked.case_id,
        revoked_at=revoked_at,
        revoke_reason=revoked.reason,
    )
    current = models.licenses.c
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[current.license_id],
            set_={
                "revoked_at": func.coalesce(current.revoked_at, statement.excluded.revoked_at),
                "revoke_reason": func.coalesce(
                    current.revoke_reason, statement.excluded.revoke_reason
                ),
            },
        )
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


async def follow_case_event(
    session: AsyncSession,
    envelope: Envelope,
    payload: Any,
    *,
    clock: ServiceClock,
    intake: Intake | None = None,
) -> None:
    """Any event of a case, from any case topic: timeline entry and the counter's view."""
    await follow_case_events(session, [(envelope, payload)], clock=clock, intake=intake)


ADOPTABLE = (CaseSubmitted.TYPE, CaseNotified.TYPE)


async def follow_case_events(
    session: AsyncSession,
    events: Sequence[tuple[Envelope, Any]],
    *,
    clock: ServiceClock,
    intake: Intake | None = None,
) -> None:
    """A batch of case events, in offset order: one statement for the timeline, one to lock
    the cases, then each changed case updated once with its events folded in order (the hot
    path of intake: every event of every case passes here). With `intake`, the bundles of the
    members whose status changed are settled (`settle_bundle`): their waiting members released
    or ended."""
    if not events:
        return
    # Bundles before cases, the lock order of every request on a bundle (no deadlock); the
    # events name their bundle, so a batch of single cases costs nothing more.
    named_bundles = sorted({b for e, _ in events if isinstance(b := e.data.get("bundle_id"), str)})
    if intake is not None and named_bundles:
        await queries.lock_bundles(session, named_bundles)
    # executemany form: one compiled statement whatever the batch size (SQLAlchemy sends
    # the rows as multi-row VALUES), where `.values([...])` would compile anew per size.
    await session.execute(
        pg_insert(models.timeline).on_conflict_do_nothing(),
        [
            {
                "event_id": inbox_key(e.id),
                "case_id": e.subject,
                "type": e.type,
                "time": e.time,
                "source": e.source,
                "data": e.data,
            }
            for e, _ in events
        ],
    )
    rows = await session.execute(
        select(
            models.cases.c.case_id,
            models.cases.c.status,
            models.cases.c.failure,
            models.cases.c.bundle_id,
        )
        .where(models.cases.c.case_id.in_(sorted({e.subject for e, _ in events})))
        .order_by(models.cases.c.case_id)  # one lock order: no deadlock between batches
        .with_for_update()
    )
    status: dict[str, CaseStatus] = {}
    failure: dict[str, dict[str, Any] | None] = {}
    bundle_of: dict[str, str] = {}
    for r in rows:
        status[r.case_id], failure[r.case_id] = CaseStatus(r.status), r.failure
        if r.bundle_id is not None:
            bundle_of[r.case_id] = r.bundle_id
    pending: dict[str, dict[str, Any]] = {}
    adopted: set[str] = set()
    for envelope, _payload in events:
        case_id = envelope.subject
        if case_id in adopted:
            continue  # the adoption replayed the whole timeline, this event included
        if case_id in status:
            changes = case_changes(status[case_id], envelope.type, envelope.data, failure[case_id])
            if changes:
                pending.setdefault(case_id, {}).update(changes)
                status[case_id] = CaseStatus(changes.get("status", status[case_id]))
                failure[case_id] = changes.get("failure", failure[case_id])
        elif "application" in envelope.data and envelope.type in ADOPTABLE:
            await _adopt_case(session, envelope, now=clock.now())
            adopted.add(case_id)
    now = clock.now()
    for case_id, changes in pending.items():
        await _update(session, case_id, changes, now=now)
    for envelope, _payload in events:
        if commitments.bars_applicant(envelope.type, envelope.data):
            await _bar_applicant(session, envelope)
    index = intake.catalogs.latest if intake is not None else None
    if intake is not None and index is not None:
        moved = sorted(
            {bundle_of[c] for c, ch in pending.items() if c in bundle_of and "status" in ch}
        )
        for bundle_id in moved:
            await settle_bundle(session, runtime=intake.runtime, index=index, bundle_id=bundle_id)


async def _bar_applicant(session: AsyncSession, envelope: Envelope) -> None:
    """A decision revoked for a breached commitment (告知承诺): its applicant, as a holder, is
    barred from commitments. A case intake does not know bars nobody: it was never taken here."""
    cases = models.cases.c
    holder = func.upper(func.btrim(cases.application["applicant"]["id_number"].astext))
    await session.execute(
        pg_insert(models.barred_holders)
        .from_select(
            ["case_id", "holder_id_number", "barred_at"],
            select(cases.case_id, holder, literal(envelope.time)).where(
                cases.case_id == envelope.subject
            ),
        )
        .on_conflict_do_nothing()
    )


async def _update(
    session: AsyncSession, case_id: str, changes: dict[str, Any], *, now: datetime
) -> None:
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(**changes, updated_at=now)
    )


async def _adopt_case(session: AsyncSession, envelope: Envelope, *, now: datetime) -> None:
    """A case submitted straight to Kafka by another intake system (a portal, another city
    system): intake answers for it too. Events of other topics may have come first (topics
    are not ordered among themselves), so replay what the timeline already holds."""
    application = Application.model_validate(envelope.data["application"])
    status = CaseStatus.awaiting_supplement
    row = case_row(
        envelope.subject,
        application,
        status,
        envelope.data.get("missing_materials", []),
        envelope.time,
    )
    await session.execute(pg_insert(models.cases).values(row).on_conflict_do_nothing())
    events = await session.execute(
        select(models.timeline.c.type, models.timeline.c.data)
        .where(models.timeline.c.case_id == envelope.subject)
        .order_by(models.timeline.c.time, models.timeline.c.event_id)
    )
    changes: dict[str, Any] = {}
    for event_type, data in events:
        changes |= case_changes(status, event_type, data or {}, changes.get("failure"))
        status = CaseStatus(changes.get("status", status))
    if changes:
        await _update(session, envelope.subject, changes, now=now)


# -- bundles (一件事一次办, DESIGN.md §8) ----------------------------------------------------------


def new_bundle_id(city_code: str, today: date) -> str:
    return f"{city_code}-B{today:%Y%m%d}-{secrets.token_hex(5).upper()}"


async def submit_bundle(
    intake: Intake,
    application: BundleApplication,
    *,
    idempotency_key: str | None,
    traceparent: str | None = None,
) -> BundleSubmissionResponse:
    """Take a bundle: refused whole, every fault listed (`domain.bundles`), or stored in one
    transaction: the bundle, each member the answers create as an ordinary case (its first
    event, or `waiting` for its prerequisites), `gov.bundle.submitted.v1` and the
    Idempotency-Key. The key works as for a case: the same body answers the same bundle, even
    after a catalog change; another body is 409 `idempotency_key_reused`."""
    digest = request_hash(application)
    index = queries.catalog_in_force(intake.catalogs)
    today = intake.runtime.clock.today()
    bundle = index.bundles.get(application.bundle_code)
    items = [index.items[m.item] for m in bundle.members if m.item in index.items] if bundle else []
    library, barred = await _library_and_bar(intake, application, items)
    holder = holder_key(application.applicant.id_number)
    plan = bundles.plan_bundle(
        index, application, today=today, library=library, barred=barred, holder=holder
    )
    if not plan.ok or plan.bundle is None:
        replay = await _replay_bundle(intake, idempotency_key, digest)
        if replay is not None:
            return replay
        raise Refused(submission_refusal(ValidationResult(refusals=plan.refusals)))
    # Held e-licences satisfy each member's materials before anything is found missing.
    reused: dict[tuple[str, str], LicensedMaterial] = {}
    members = []
    for member in plan.members:
        reuse = reuse_licenses(member.item, member.application, library)
        members.append(replace(member, application=reuse.application))
        reused |= {(r.material, r.license_id): r for r in reuse.reused}
    plan = bundles.with_members_missing(replace(plan, members=tuple(members)), index)
    try:
        async with unit_of_work(intake.runtime.sessions) as session:
            return await create_bundle(
                session,
                intake=intake,
                index=index,
                application=application,
                plan=plan,
                today=today,
                idempotency_key=idempotency_key or None,
                digest=digest,
                reused=list(reused.values()),
                traceparent=traceparent,
            )
    except KeyAlreadyUsed:
        replay = await _replay_bundle(intake, idempotency_key, digest)
        if replay is None:
            raise
        return replay


async def _replay_bundle(
    intake: Intake, idempotency_key: str | None, digest: str
) -> BundleSubmissionResponse | None:
    if not idempotency_key:
        return None
    async with intake.runtime.sessions() as session:
        return await queries.replay_bundle(session, idempotency_key, digest)


async def create_bundle(
    session: AsyncSession,
    *,
    intake: Intake,
    index: CatalogIndex,
    application: BundleApplication,
    plan: bundles.BundlePlan,
    today: date,
    idempotency_key: str | None,
    digest: str,
    reused: Sequence[LicensedMaterial],
    traceparent: str | None,
) -> BundleSubmissionResponse:
    """The bundle row, its members (each by `create_case`), `gov.bundle.submitted.v1` and the
    stored answer of the key, in the caller's transaction."""
    runtime = intake.runtime
    bundle = plan.bundle
    assert bundle is not None
    now = runtime.clock.now()
    bundle_id = new_bundle_id(index.city_code, today)
    case_ids = {m.item.code: new_case_id(index.city_code, today) for m in plan.members}
    await session.execute(
        models.bundles.insert().values(
            bundle_id=bundle_id,
            bundle_code=bundle.code,
            bundle_name=bundle.name,
            status=BundleStatus.in_progress.value,
            channel=application.channel.value,
            office_code=application.office_code,
            applicant=application.applicant.model_dump(mode="json"),
            answers=dict(application.answers),
            delivery=application.delivery.model_dump(mode="json"),
            excluded=list(plan.excluded),
            time_limit_days=bundle.time_limit_days,
            lead=bundle.lead,
            created_at=now,
            updated_at=now,
        )
    )
    keys = load_keys(runtime.settings)
    previews: list[BundleMemberPreview] = []
    refs: list[BundleMemberRef] = []
    for member in plan.members:
        case_id = case_ids[member.item.code]
        after = tuple(case_ids[code] for code in member.after if code in case_ids)
        answer = await create_case(
            session,
            runtime=runtime,
            application=member.application,
            case_id=case_id,
            missing=list(member.missing),
            route_preview=(
                None
                if member.missing
                else route_preview(
                    intake, index, member.application, today, bundle_code=bundle.code
                )
            ),
            idempotency_key=None,
            digest=digest,
            handover_keys=keys,
            traceparent=traceparent,
            member=BundleMembership(bundle_id, bundle.code, after),
        )
        previews.append(
            BundleMemberPreview(
                case_id=case_id,
                item_code=member.item.code,
                status=answer.status,
                route_preview=answer.route_preview,
            )
        )
        refs.append(
            BundleMemberRef(
                case_id=case_id, item_code=member.item.code, status=answer.status, after=list(after)
            )
        )
    await runtime.emit(
        session,
        BundleSubmitted(
            bundle_id=bundle_id,
            bundle_code=bundle.code,
            bundle_name=bundle.name,
            lead=bundle.lead,
            time_limit_days=bundle.time_limit_days,
            channel=application.channel,
            office_code=application.office_code,
            answers=dict(application.answers),
            members=refs,
            excluded=list(plan.excluded),
            delivery_method=application.delivery.method,
            delivery_address=application.delivery.address,
            submitted_at=now,
        ),
        traceparent=traceparent,
    )
    response = BundleSubmissionResponse(
        bundle_id=bundle_id,
        status=BundleStatus.in_progress,
        members=previews,
        missing_materials=plan.missing_materials,
        excluded=list(plan.excluded),
        reused_licenses=list(reused),
    )
    if idempotency_key is not None:
        await _store_key(
            session, models.bundle_keys, idempotency_key, digest, response, bundle_id=bundle_id
        )
    return response


async def withdraw_bundle(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    bundle_id: str,
    reason: str | None,
) -> BundleWithdrawResponse:
    """Withdraw the bundle, by a clerk of the office that took it: every undecided member
    (waiting ones included) is withdrawn; decided ones are kept, their results still come
    (and go out together). `gov.bundle.withdrawn.v1` lists the members withdrawn now."""
    bundle = await queries.bundle_of_the_office(session, bundle_id, principal, lock=True)
    status = BundleStatus(bundle.status)
    if status is not BundleStatus.in_progress:
        raise refused(
            409,
            "invalid_state",
            "The bundle can no longer be withdrawn",
            f"Bundle {bundle_id} is {status.value}; withdrawal is possible while it is in "
            "progress.",
            status_now=status.value,
        )
    now = runtime.clock.now()
    withdrawn: list[str] = []
    kept: list[str] = []
    for member in await queries.bundle_members(session, bundle_id, lock=True):
        member_status = CaseStatus(member.status)
        if bundles.withdrawable(member_status):
            await _end_member(session, runtime, member.case_id, bundle_id, reason, now=now)
            withdrawn.append(member.case_id)
        elif member_status in bundles.KEPT:
            kept.append(member.case_id)
    new_status = bundles.status_after_withdrawal(kept)
    await runtime.emit(
        session,
        BundleWithdrawn(
            bundle_id=bundle_id, withdrawn_members=withdrawn, reason=reason, withdrawn_at=now
        ),
    )
    await session.execute(
        update(models.bundles)
        .where(models.bundles.c.bundle_id == bundle_id)
        .values(status=new_status.value, updated_at=now)
    )
    return BundleWithdrawResponse(
        bundle_id=bundle_id, status=new_status, withdrawn=withdrawn, kept=kept
    )


async def _end_member(
    session: AsyncSession,
    runtime: ServiceRuntime,
    case_id: str,
    bundle_id: str,
    reason: str | None,
    *,
    now: datetime,
) -> None:
    await runtime.emit(
        session,
        CaseWithdrawn(case_id=case_id, reason=reason, withdrawn_at=now, bundle_id=bundle_id),
    )
    await _update(
        session,
        case_id,
        {"status": CaseStatus.withdrawn.value, "status_rank": RANK[CaseStatus.withdrawn]},
        now=now,
    )


async def add_bundle_materials(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    bundle_id: str,
    materials: list[Material],
    index: CatalogIndex,
) -> BundleSubmissionResponse:
    """One set of materials for the bundle: each material goes to every member still waiting
    for materials whose item takes it (`awaiting_supplement` members are completed as a case
    is, `waiting` ones keep it for their submission). Refused whole, as a case's materials are:
    a code no member takes (`unknown_material`), or nobody waiting for materials
    (`invalid_state`)."""
    await queries.bundle_of_the_office(session, bundle_id, principal, lock=True)
    members = await queries.bundle_members(session, bundle_id, lock=True)
    takers = {
        m.case_id: item
        for m in members
        if (item := index.items.get(m.item_code)) is not None
        and CaseStatus(m.status) in (CaseStatus.awaiting_supplement, CaseStatus.waiting)
    }
    codes = [m.code for m in materials]
    every = {
        spec.code for m in members if (i := index.items.get(m.item_code)) for spec in i.materials
    }
    unknown = [code for code in codes if code not in every]
    if unknown:
        raise refused(
            422,
            "unknown_material",
            "Unknown material code",
            f"{', '.join(unknown)} not among the bundle's materials {', '.join(sorted(every))}",
            errors=tuple(FieldError("materials", f"unknown {code}") for code in unknown),
        )
    if not takers:
        raise refused(
            409,
            "invalid_state",
            "No member of this bundle is waiting for materials",
            f"Bundle {bundle_id}'s members are past taking materials at intake; a member's "
            "review asks for its own (POST /v1/cases/{case_id}/materials).",
        )
    now = runtime.clock.now()
    previews = []
    for member in members:
        item = takers.get(member.case_id)
        given = bundles.member_materials(item, materials) if item is not None else []
        status = CaseStatus(member.status)
        if given and status is CaseStatus.awaiting_supplement:
            answer = await add_materials(
                session,
                runtime=runtime,
                principal=principal,
                case_id=member.case_id,
                materials=given,
                index=index,
            )
            status = answer.status
        elif given and item is not None:  # waiting: kept for its submission
            application = Application.model_validate(member.application)
            merged = {m.code: m for m in application.materials} | {m.code: m for m in given}
            application = application.model_copy(update={"materials": list(merged.values())})
            prerequisites = [
                i
                for m in members
                if m.case_id in (member.after or []) and (i := index.items.get(m.item_code))
            ]
            brought = bundles.brought_by_prerequisites(item, merged, prerequisites)
            await _update(
                session,
                member.case_id,
                {
                    "application": application.model_dump(mode="json"),
                    "missing_materials": list(missing_materials(item, [*merged, *brought])),
                },
                now=now,
            )
        previews.append(
            BundleMemberPreview(
                case_id=member.case_id,
                item_code=member.item_code,
                status=status,
                route_preview=None,
            )
        )
    missing = await queries.bundle_missing(session, bundle_id)
    return BundleSubmissionResponse(
        bundle_id=bundle_id,
        status=BundleStatus.in_progress,
        members=previews,
        missing_materials=missing,
    )


async def read_bundle(intake: Intake, bundle_id: str, principal: Principal) -> BundleView:
    """The bundle as the caller may see it (as a case: its office's clerks, the reviewers of a
    member's department, operators and admins masked), on the audit trail."""
    index = intake.catalogs.latest
    async with intake.runtime.sessions() as session:
        bundle, members, timeline = await queries.readable_bundle(session, bundle_id, principal)
    clear = access.sees_personal_data(principal)
    async with unit_of_work(intake.runtime.sessions) as session:
        await intake.runtime.audit(
            session,
            principal,
            "bundle.read",
            bundle_id,
            {"personal_data": "clear" if clear else "masked"},
        )
    return queries.bundle_view(bundle, members, timeline, index=index, clear=clear)


# -- waiting members: released or ended (flow step 4) ------------------------------------------


async def settle_bundle(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    index: CatalogIndex,
    bundle_id: str,
) -> None:
    """Release or end the bundle's waiting members, as their prerequisites now stand: each is
    submitted once every prerequisite is approved and the licences they issue for it are in
    intake's library (attached to its materials), or withdrawn (`prerequisite_ended`) when one
    ended without approval; repeated until nothing changes, so an ending travels down the
    chain in one go. The bundle row is locked first: the consumers and requests touching one
    bundle take turns, and a member is released once."""
    locked = await session.execute(
        select(models.bundles.c.bundle_id)
        .where(models.bundles.c.bundle_id == bundle_id)
        .with_for_update()
    )
    if locked.first() is None:
        return
    members = {m.case_id: m for m in await queries.bundle_members(session, bundle_id, lock=True)}
    status = {case_id: CaseStatus(m.status) for case_id, m in members.items()}
    licences = await queries.licences_of_cases(session, list(members))
    keys = load_keys(runtime.settings)
    now = runtime.clock.now()
    changed = True
    while changed:
        changed = False
        for case_id, member in members.items():
            if status[case_id] is not CaseStatus.waiting:
                continue
            item = index.items.get(member.item_code)
            if item is None:
                continue
            application = Application.model_validate(member.application)
            prerequisites = [
                (c, status[c], index.items.get(members[c].item_code))
                for c in member.after or []
                if c in members
            ]
            decision = bundles.release_decision(
                item, [m.code for m in application.materials], prerequisites, licences
            )
            if decision.action is bundles.Release.end:
                await _end_member(
                    session, runtime, case_id, bundle_id, bundles.PREREQUISITE_ENDED, now=now
                )
                status[case_id] = CaseStatus.withdrawn
                changed = True
            elif decision.action is bundles.Release.submit:
                status[case_id] = await _release(
                    session,
                    runtime=runtime,
                    member=member,
                    item=item,
                    application=application,
                    licences=decision.licences,
                    keys=keys,
                    now=now,
                )
                changed = True


async def _release(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    member: Any,
    item: Item,
    application: Application,
    licences: Mapping[str, str],
    keys: HandoverKeys,
    now: datetime,
) -> CaseStatus:
    """A waiting member's prerequisites are approved: submitted with their licences attached,
    or notified of what it still lacks (as a case taken with materials missing)."""
    application = application.model_copy(
        update={"materials": bundles.attach_licences(application.materials, licences)}
    )
    missing = list(missing_materials(item, (m.code for m in application.materials)))
    new_status = CaseStatus.awaiting_supplement if missing else CaseStatus.submitted
    await emit_first_event(
        session,
        runtime=runtime,
        case_id=member.case_id,
        application=application,
        missing=missing,
        member=BundleMembership.of(member),
        keys=keys,
    )
    await _update(
        session,
        member.case_id,
        {
            "status": new_status.value,
            "status_rank": RANK[new_status],
            "application": application.model_dump(mode="json"),
            "missing_materials": missing,
        },
        now=now,
    )
    return new_status


# -- consumer: bundle.v1 (the bundle's own story) ------------------------------------------------


BUNDLE_STATUS_OF_EVENT = {
    BundleDelivered.TYPE: BundleStatus.delivered,
    BundleClosed.TYPE: BundleStatus.closed,
}


async def follow_bundle_event(
    session: AsyncSession, envelope: Envelope, payload: Any, *, clock: ServiceClock
) -> None:
    """Any bundle event: into the bundle's timeline; delivered and closed (delivery) move its
    status forward."""
    await session.execute(
        pg_insert(models.bundle_timeline)
        .values(
            event_id=inbox_key(envelope.id),
            bundle_id=envelope.subject,
            type=envelope.type,
            time=envelope.time,
            source=envelope.source,
            data=envelope.data,
        )
        .on_conflict_do_nothing()
    )
    target = BUNDLE_STATUS_OF_EVENT.get(envelope.type)
    if target is None:
        return
    row = (
        await session.execute(
            select(models.bundles.c.status)
            .where(models.bundles.c.bundle_id == envelope.subject)
            .with_for_update()
        )
    ).first()
    if row is None:
        return  # a bundle taken by another intake system: its timeline is kept all the same
    new_status = bundles.next_bundle_status(BundleStatus(row.status), target)
    if new_status is not None:
        await session.execute(
            update(models.bundles)
            .where(models.bundles.c.bundle_id == envelope.subject)
            .values(status=new_status.value, updated_at=clock.now())
        )
