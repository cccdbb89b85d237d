"""intake's copy of the licence library (电子证照, DESIGN.md §7), from `license.v1`: issued and
revoked e-licences kept whichever comes first, a waiting bundle member's prerequisite licence
settling its bundle, and a holder's licences read on the audit trail."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import LicenseIssued, LicenseRevoked
from contracts.rest import HeldLicense
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.logs import mask_id_number
from services.common.principals import Principal
from services.common.service import ServiceRuntime
from services.intake import models, queries
from services.intake.domain import access
from services.intake.domain.licenses import holder_key
from services.intake.handlers.bundles import settle_bundles
from services.intake.handlers.parts import Intake


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


# -- consumer: license.v1 ---------------------------------------------------------------------


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
    if intake is not None:
        bundle_id = await queries.bundle_of_case(session, issued.case_id)
        await settle_bundles(session, intake, [bundle_id] if bundle_id is not None else [])


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
