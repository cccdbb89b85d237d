"""intake's event handlers and commands: take a submission (reusing the applicant's
e-licences), add materials, withdraw, read a case on the audit trail, follow every case topic
into the counter's view of the case (status, route, deadline, timeline), keep intake's copy
of the licence library (`license.v1`), and take bundles (一件事一次办, DESIGN.md §8) whose
members are ordinary cases. Plain functions over a session and the process's parts
(`Intake`); a refused command raises `Refused` (services.common.refusals); reads are in
`queries`.

One room, in files by what they are about, importing downward only (pyproject's
import-linter contract `intake-handlers`):

  partners               the partner regions' cases (§9): adopted, imported, followed
  case_events, library   the consumers of the case topics and of `license.v1`
  bundles                bundle commands, waiting members released or ended, `bundle.v1`
  cases                  case commands, and the taking every case and member goes through
  parts                  `Intake`, the process's parts every handler is given

The names `app`, `api` and the tests use are the room's, re-exported here."""

from services.intake.handlers.bundles import (
    add_bundle_materials,
    follow_bundle_event,
    follow_bundle_events,
    read_bundle,
    settle_bundle,
    submit_bundle,
    withdraw_bundle,
)
from services.intake.handlers.case_events import follow_case_event, follow_case_events
from services.intake.handlers.cases import (
    KeyAlreadyUsed,
    add_materials,
    case_row,
    read_case,
    submission_handover,
    submit,
    withdraw,
)
from services.intake.handlers.library import (
    read_licenses,
    record_license_issued,
    record_license_revoked,
)
from services.intake.handlers.partners import partner_subscriptions
from services.intake.handlers.parts import (
    Intake,
    build_index,
    check_handover_keys,
    city_of_catalog,
)

__all__ = [
    "Intake",
    "KeyAlreadyUsed",
    "add_bundle_materials",
    "add_materials",
    "build_index",
    "case_row",
    "check_handover_keys",
    "city_of_catalog",
    "follow_bundle_event",
    "follow_bundle_events",
    "follow_case_event",
    "follow_case_events",
    "partner_subscriptions",
    "read_bundle",
    "read_case",
    "read_licenses",
    "record_license_issued",
    "record_license_revoked",
    "settle_bundle",
    "submission_handover",
    "submit",
    "submit_bundle",
    "withdraw",
    "withdraw_bundle",
]
