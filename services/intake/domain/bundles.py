"""Bundles at the counter (一件事一次办, DESIGN.md §8), pure: what intake refuses of a bundle
application, which members the answers create, the one set of materials split per member,
what a prerequisite's licence will bring, when a waiting member is released or ended, and the
bundle's status as the counter sees it.

One form, one set of materials, one window: the application is refused whole, every fault
listed at once (the first by `ORDER` names the problem), with the refusals of a single case
(invalid_id_number, unknown_office, office_not_allowed with where to go, unknown_material,
deferral_not_allowed, commitment_not_allowed, invalid_license, invalid_delivery) plus

  unknown_bundle        the bundle code is not in the catalog
  invalid_answers       a question unanswered, an answer to no question of the bundle, or an
                        answer of the wrong type or option (情形引导); every one in `errors`
  bundle_not_effective  the bundle, or a member the answers create, is not in force today

A member is created when every answer of its `when` matches; the others are `excluded`. Each
member is an ordinary case whose materials are those of the one set its item takes. A member
with `after` waits (`waiting`) for those members' approval; a material of it whose
`license_type` a prerequisite's item issues is brought by that prerequisite's e-licence, so it
is not missing at submission. A prerequisite that ends without approval (denied, withdrawn,
terminated, revoked) ends its waiting dependents, transitively (`prerequisite_ended`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from contracts.catalog import Bundle, BundleMember, Item, Question, QuestionType
from contracts.common import Application, CaseStatus, Material
from contracts.rest import BundleApplication, BundleStatus
from services.common.refusals import FieldError, Refusal
from services.intake.domain.commitments import commitment_refusals
from services.intake.domain.licenses import LibraryLicense, check_named_licenses
from services.intake.domain.validation import (
    deferral_problem,
    delivery_refusals,
    field_refusal,
    id_number_problem,
    office_refusals,
    unknown_codes_refusal,
)
from services.policy.bundle_rules import bundle_office_allowed, bundle_window_holds
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import item_in_force, missing_materials

PREREQUISITE_ENDED = "prerequisite_ended"

TITLES = {
    "unknown_bundle": "Unknown bundle",
    "invalid_answers": "The answers do not fit the bundle's questions",
    "bundle_not_effective": "The bundle is not in force",
}
# Precedence of the problem's code when several refusals apply.
ORDER = (
    "invalid_id_number",
    "unknown_bundle",
    "invalid_answers",
    "bundle_not_effective",
    "unknown_office",
    "office_not_allowed",
    "unknown_material",
    "deferral_not_allowed",
    "commitment_not_allowed",
    "invalid_license",
    "invalid_delivery",
)

# Member statuses: approved for its dependents, ended (no approval will come), decided (for
# the bundle's clock and its withdrawal: a result comes, or nothing will).
APPROVED = frozenset(
    {CaseStatus.approved, CaseStatus.result_issued, CaseStatus.delivered, CaseStatus.closed}
)
ENDED = frozenset(
    {CaseStatus.denied, CaseStatus.withdrawn, CaseStatus.terminated, CaseStatus.revoked}
)
# Withdrawing the bundle keeps these: decided, their results still come.
KEPT = frozenset(APPROVED | {CaseStatus.approval_held, CaseStatus.denied})
# The bundle's one set of materials goes to these: completing a member that lacks some, or
# kept for the submission of a member waiting for its prerequisites.
TAKE_MATERIALS = frozenset({CaseStatus.awaiting_supplement, CaseStatus.waiting})


def _by_order(refusals: Iterable[Refusal]) -> tuple[Refusal, ...]:
    return tuple(sorted(refusals, key=lambda r: ORDER.index(r.code) if r.code in ORDER else 99))


# --------------------------------------------------------------------------- questions


def answer_errors(bundle: Bundle, answers: Mapping[str, bool | str]) -> list[FieldError]:
    """Every fault of the answers (情形引导): a question left unanswered, an answer to no question
    of the bundle, an answer of the wrong type or not among the options."""
    questions = {q.code: q for q in bundle.questions}
    errors = [
        FieldError(f"answers.{q.code}", f"question {q.code!r} is unanswered", "unanswered")
        for q in bundle.questions
        if q.code not in answers
    ]
    for code, answer in answers.items():
        question = questions.get(code)
        if question is None:
            known = ", ".join(questions) or "none"
            errors.append(
                FieldError(
                    f"answers.{code}",
                    f"bundle {bundle.code} asks no question {code!r} (its questions: {known})",
                    "unknown_question",
                )
            )
        elif (why := _wrong_answer(question, answer)) is not None:
            errors.append(FieldError(f"answers.{code}", why, "wrong_answer"))
    return errors


def _wrong_answer(question: Question, answer: bool | str) -> str | None:
    if question.type is QuestionType.boolean and not isinstance(answer, bool):
        return f"question {question.code!r} is answered true or false, not {answer!r}"
    if question.type is QuestionType.choice and (
        isinstance(answer, bool) or answer not in question.options
    ):
        options = ", ".join(question.options)
        return f"question {question.code!r} is answered with one of {options}, not {answer!r}"
    return None


def applies(member: BundleMember, answers: Mapping[str, bool | str]) -> bool:
    """A member is created when every answer of its `when` matches (`True` is not `1`)."""
    return all(
        q in answers and type(answers[q]) is type(a) and answers[q] == a
        for q, a in member.when.items()
    )


def created_members(
    bundle: Bundle, answers: Mapping[str, bool | str]
) -> tuple[list[BundleMember], list[str]]:
    """The members the answers create (in catalog order) and the item codes they leave out."""
    created = [m for m in bundle.members if applies(m, answers)]
    excluded = [m.item for m in bundle.members if not applies(m, answers)]
    return created, excluded


# --------------------------------------------------------------------------- materials


def member_materials(item: Item, materials: Sequence[Material]) -> list[Material]:
    """The part of the one set of materials the member's item takes, in the set's order."""
    takes = {m.code for m in item.materials}
    return [m for m in materials if m.code in takes]


def bundle_materials_refusal(
    bundle_id: str, items: Iterable[Item], codes: Iterable[str], *, any_taker: bool
) -> Refusal | None:
    """Materials for a bundle are refused whole, as a case's are: a code no member's item
    takes (`unknown_material`, every one listed), or no member that would take them
    (`any_taker`: none waits for materials; `invalid_state`). None: they are taken."""
    every = {spec.code for item in items for spec in item.materials}
    unknown = unknown_codes_refusal(every, codes, among="the bundle's materials ")
    if unknown is not None:
        return unknown
    if any_taker:
        return None
    return Refusal(
        409,
        "invalid_state",
        "No member of this bundle is waiting for materials",
        f"Bundle {bundle_id}'s members are past taking materials at intake; a member's "
        "review asks for its own (POST /v1/cases/{case_id}/materials).",
    )


def licence_types_issued(prerequisites: Iterable[Item]) -> dict[str, str]:
    """license_type -> the prerequisite item issuing it as an e-licence."""
    return {
        item.result.license_type: item.code
        for item in prerequisites
        if item.result.license_type is not None and item.result.e_license
    }


def brought_by_prerequisites(
    item: Item, given: Iterable[str], prerequisites: Iterable[Item]
) -> list[str]:
    """The materials of a dependent member a prerequisite's e-licence will bring: those with a
    `license_type` a prerequisite's item issues, not given (nor satisfied) already."""
    issued = licence_types_issued(prerequisites)
    have = set(given)
    return [
        m.code
        for m in item.materials
        if m.license_type is not None and m.license_type in issued and m.code not in have
    ]


@dataclass(frozen=True, slots=True)
class MemberPlan:
    """One member as it will be created: its item, the item codes it waits for, its own
    application (its part of the one set), the materials still missing (for the one-time
    notification; never those a prerequisite's licence brings)."""

    item: Item
    after: tuple[str, ...]
    application: Application
    missing: tuple[str, ...] = ()

    @property
    def waits(self) -> bool:
        return bool(self.after)


@dataclass(frozen=True, slots=True)
class BundlePlan:
    """A bundle application checked: `refusals` empty means it is taken with `members`."""

    refusals: tuple[Refusal, ...] = ()
    bundle: Bundle | None = None
    members: tuple[MemberPlan, ...] = ()
    excluded: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def missing_materials(self) -> list[str]:
        """Every material still missing over the members, each code once."""
        return list(dict.fromkeys(code for m in self.members for code in m.missing))


def plan_bundle(
    index: CatalogIndex,
    application: BundleApplication,
    *,
    today: date,
    library: Sequence[LibraryLicense] = (),
    barred: bool = False,
    holder: str = "",
) -> BundlePlan:
    """Check a bundle application against the catalog version intake holds (pure; `library`:
    the licences the applicant holds or the materials name, `barred`: whether the applicant
    breached a commitment). Members get their part of the one set of materials; licence reuse
    (免提交) is the handler's, member by member, before `with_members_missing`."""
    applicant = application.applicant
    refusals: list[Refusal] = []
    id_problem = id_number_problem(applicant.category, applicant.id_number, today=today)
    if id_problem is not None:
        refusals.append(field_refusal("invalid_id_number", "applicant.id_number", id_problem))
    bundle = index.bundles.get(application.bundle_code)
    if bundle is None:
        refusals.append(_unknown_bundle(index, application.bundle_code))
        refusals.extend(delivery_refusals(application.delivery, application.channel))
        return BundlePlan(refusals=_by_order(refusals))
    answers = dict(application.answers)
    created, excluded = created_members(bundle, answers)
    items = [index.items.get(m.item) for m in created]
    known = [item for item in items if item is not None]
    refusals.extend(_answers_refusals(bundle, answers))
    refusals.extend(_not_in_force(bundle, created, items, today))
    decision = bundle_office_allowed(
        index,
        bundle,
        known,
        channel=application.channel,
        office_code=application.office_code,
        applicant_division=applicant.division_code,
    )
    refusals.extend(office_refusals(decision))
    refusals.extend(_material_refusals(index, bundle, known, application.materials))
    refusals.extend(
        _member_refusals(known, application.materials, library, barred=barred, holder=holder)
    )
    refusals.extend(delivery_refusals(application.delivery, application.channel))
    if refusals:
        return BundlePlan(refusals=_by_order(refusals), bundle=bundle)
    members = tuple(
        _member_plan(member, item, application) for member, item in zip(created, known, strict=True)
    )
    return BundlePlan(bundle=bundle, members=members, excluded=tuple(excluded))


def _member_plan(member: BundleMember, item: Item, application: BundleApplication) -> MemberPlan:
    """The member as an application of its own: the bundle's channel, office, applicant and
    delivery, and its part of the one set of materials."""
    return MemberPlan(
        item=item,
        after=tuple(member.after),
        application=Application(
            item_code=item.code,
            channel=application.channel,
            office_code=application.office_code,
            applicant=application.applicant,
            materials=member_materials(item, application.materials),
            delivery=application.delivery,
        ),
    )


def with_members_missing(plan: BundlePlan, index: CatalogIndex) -> BundlePlan:
    """Each member's missing materials, given its application as it now stands (held licences
    attached): what it lacks, less what a prerequisite's licence will bring."""
    members = []
    for member in plan.members:
        given = [m.code for m in member.application.materials]
        prerequisites = [index.items[code] for code in member.after if code in index.items]
        brought = brought_by_prerequisites(member.item, given, prerequisites)
        missing = missing_materials(member.item, [*given, *brought])
        members.append(MemberPlan(member.item, member.after, member.application, tuple(missing)))
    return BundlePlan(plan.refusals, plan.bundle, tuple(members), plan.excluded)


def _unknown_bundle(index: CatalogIndex, bundle_code: str) -> Refusal:
    codes = ", ".join(sorted(index.bundles)) or "none"
    message = (
        f"bundle {bundle_code!r} is not in the catalog (bundles: {codes}); "
        "GET /v1/bundles lists them"
    )
    return Refusal(
        422,
        "unknown_bundle",
        TITLES["unknown_bundle"],
        message,
        (FieldError("bundle_code", message, "unknown_bundle"),),
    )


def _answers_refusals(bundle: Bundle, answers: Mapping[str, bool | str]) -> list[Refusal]:
    errors = answer_errors(bundle, answers)
    if not errors:
        return []
    return [
        Refusal(
            422,
            "invalid_answers",
            TITLES["invalid_answers"],
            "; ".join(e.message for e in errors),
            tuple(errors),
        )
    ]


def _not_in_force(
    bundle: Bundle, created: Sequence[BundleMember], items: Sequence[Item | None], today: date
) -> list[Refusal]:
    problems = []
    if not bundle_window_holds(bundle, today):
        window = f"{bundle.effective_from or '…'} ~ {bundle.effective_to or '…'}"
        problems.append(f"bundle {bundle.code} is not in force on {today} (effective {window})")
    for member, item in zip(created, items, strict=True):
        if item is None:
            problems.append(f"member {member.item} is not in the catalog")
        elif not item_in_force(item, today):
            window = f"{item.effective_from or '…'} ~ {item.effective_to or '…'}"
            problems.append(f"member {item.code} is not in force on {today} (effective {window})")
    if not problems:
        return []
    return [
        Refusal(
            422,
            "bundle_not_effective",
            TITLES["bundle_not_effective"],
            "; ".join(problems),
            tuple(FieldError("bundle_code", p, "bundle_not_effective") for p in problems),
        )
    ]


def _material_refusals(
    index: CatalogIndex, bundle: Bundle, created: Sequence[Item], materials: Sequence[Material]
) -> list[Refusal]:
    """unknown_material: a code no member of the bundle takes (a code only a member the
    answers left out takes is dropped); deferral_not_allowed: deferred where a created member
    taking it does not allow it."""
    every = [index.items[m.item] for m in bundle.members if m.item in index.items]
    valid = sorted({spec.code for item in every for spec in item.materials})
    out = []
    for i, material in enumerate(materials):
        if material.code not in valid:
            out.append(
                field_refusal(
                    "unknown_material",
                    f"materials[{i}].code",
                    f"material {material.code!r} is not one of bundle {bundle.code}'s "
                    f"materials; valid codes: {', '.join(valid) or '(none)'}",
                )
            )
        elif material.deferred:
            why = next(
                (w for item in created if (w := deferral_problem(item, material.code))), None
            )
            if why is not None:
                out.append(field_refusal("deferral_not_allowed", f"materials[{i}].deferred", why))
    return out


def _member_refusals(
    members: Sequence[Item],
    materials: Sequence[Material],
    library: Sequence[LibraryLicense],
    *,
    barred: bool,
    holder: str,
) -> list[Refusal]:
    """What each member's item refuses of the one set as a single case would: a commitment
    it does not take (or from a barred applicant), a named e-licence it cannot use."""
    return [
        *_first_per_field(commitment_refusals(i, materials, barred=barred) for i in members),
        *_first_per_field(check_named_licenses(i, holder, materials, library)[1] for i in members),
    ]


def _first_per_field(groups: Iterable[Iterable[Refusal]]) -> list[Refusal]:
    """One refusal per field: several members taking one material find the same fault."""
    seen: dict[str, Refusal] = {}
    for group in groups:
        for refusal in group:
            key = refusal.errors[0].field if refusal.errors else refusal.detail
            seen.setdefault(key, refusal)
    return list(seen.values())


# --------------------------------------------------------------------------- waiting members


class Release(StrEnum):
    wait = "wait"
    submit = "submit"
    end = "end"


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    """What becomes of a waiting member now: still waiting, submitted with these licences
    attached (material code -> licence id), or ended (a prerequisite will never be approved)."""

    action: Release
    licences: Mapping[str, str] = field(default_factory=dict)
    ended_by: str | None = None  # the prerequisite case that ended


def standing(status: CaseStatus, decision: str | None) -> CaseStatus:
    """A prerequisite's status as its dependents judge it. A denial's letter moves the case on
    to result_issued as an approval's licence does, and intake may apply the result before the
    decision (topics are not ordered among themselves): past the decision the recorded
    `decision` says which it was, and until it is known the case counts as undecided."""
    if status in APPROVED and status is not CaseStatus.approved:
        if decision == "denied":
            return CaseStatus.denied
        if decision != "approved":
            return CaseStatus.accepted
    return status


def release_decision(
    item: Item,
    given: Iterable[str],
    prerequisites: Sequence[tuple[str, CaseStatus, Item | None]],
    licences: Mapping[tuple[str, str], str],
) -> ReleaseDecision:
    """A waiting member (`item`, with the material codes `given`) whose prerequisites are
    (case id, status, item): ended when one of them ended; submitted when all are approved and
    intake's library holds, for each material a prerequisite's item issues the type of, that
    prerequisite's licence (`licences`: (case id, license_type) -> licence id); else waits."""
    for case_id, status, _item in prerequisites:
        if status in ENDED:
            return ReleaseDecision(Release.end, ended_by=case_id)
    if any(status not in APPROVED for _case, status, _item in prerequisites):
        return ReleaseDecision(Release.wait)
    have = set(given)
    attach: dict[str, str] = {}
    for spec in item.materials:
        if spec.license_type is None or spec.code in have:
            continue
        issuers = [
            case_id
            for case_id, _status, pre in prerequisites
            if pre is not None
            and pre.result.e_license
            and pre.result.license_type == spec.license_type
        ]
        if not issuers:
            continue
        found = next(
            (
                licences[(c, spec.license_type)]
                for c in issuers
                if (c, spec.license_type) in licences
            ),
            None,
        )
        if found is None:
            return ReleaseDecision(Release.wait)  # approved; its licence is on its way
        attach[spec.code] = found
    return ReleaseDecision(Release.submit, licences=attach)


def attach_licences(materials: Sequence[Material], licences: Mapping[str, str]) -> list[Material]:
    """The member's materials with the prerequisites' licences attached (added after them)."""
    out = [m for m in materials if m.code not in licences]
    return [*out, *(Material(code=code, e_license_id=lid) for code, lid in licences.items())]


# --------------------------------------------------------------------------- the bundle


def withdrawable(status: CaseStatus) -> bool:
    """A member the bundle's withdrawal withdraws: undecided, waiting included."""
    return status not in KEPT and status not in ENDED


def status_after_withdrawal(kept: Sequence[str]) -> BundleStatus:
    """Withdrawn when no member has or will get a result; otherwise the kept members' results
    still go out together (delivery), and the bundle is in progress until then."""
    return BundleStatus.in_progress if kept else BundleStatus.withdrawn


BUNDLE_RANK = {
    BundleStatus.in_progress: 0,
    BundleStatus.delivered: 1,
    BundleStatus.closed: 2,
    BundleStatus.withdrawn: 2,
}


def next_bundle_status(current: BundleStatus, target: BundleStatus) -> BundleStatus | None:
    """Bundle events of one bundle come in order, but a status only moves forward anyway."""
    if target is current or BUNDLE_RANK[target] < BUNDLE_RANK[current]:
        return None
    if current is BundleStatus.withdrawn:
        return None
    return target
