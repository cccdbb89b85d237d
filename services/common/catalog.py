"""The catalog (DESIGN.md §3) validated whole: `validate_catalog` checks the shape (pydantic)
and every cross-reference and lists all problems at once, so an operator fixes a refused
catalog in one pass. Reading a catalog file into the dict it takes: services/operators/
catalog_file.py.

A validated catalog is indexed and applied by the pure policy in `services/policy/`
(`CatalogIndex`, intake's and routing's rules).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import UnionType
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from contracts.catalog import (
    LEVEL_OFFICE,
    OFFICE_LEVEL,
    Bundle,
    BundleMember,
    Calendar,
    Catalog,
    CatalogModel,
    City,
    Department,
    District,
    Item,
    Office,
    Question,
    QuestionType,
)
from contracts.common import UNSTORABLE_MESSAGE, Level, Mode, is_unstorable
from services.policy.intake_rules import effective_intake_levels

# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    """One thing wrong with a catalog: where (`items[3].owner`) and what."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path or '(catalog)'}: {self.message}"


M = TypeVar("M", bound=CatalogModel)
T = TypeVar("T")


def _join(prefix: str, loc: Iterable[int | str]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class found by following `loc` (field names, list indexes) from `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = info.annotation
        # Unwrap list[X] and X | None down to the model inside.
        while get_origin(current) in (list, Union, UnionType):
            inner = [a for a in get_args(current) if a is not type(None)]
            current = inner[0] if inner else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _shape_problems(
    prefix: str, model: type[BaseModel], exc: ValidationError
) -> list[CatalogProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            known = ", ".join(owner.model_fields) if owner else "see DESIGN.md §3"
            message = f"unknown field {loc[-1]!r}; known fields: {known}"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif is_unstorable(err):
            message = UNSTORABLE_MESSAGE
        else:
            message = err["msg"]
        problems.append(CatalogProblem(_join(prefix, loc), message))
    return problems


def _raw_code(raw: Any) -> str | None:
    """The code of an entry that failed validation, so later checks don't report it twice."""
    if isinstance(raw, Mapping) and isinstance(raw.get("code"), str | int):
        return str(raw["code"]).strip()
    return None


def _one(raw: Mapping[str, Any], key: str, model: type[M], out: list[CatalogProblem]) -> M | None:
    if key not in raw:
        out.append(CatalogProblem(key, "required section is missing"))
        return None
    try:
        return model.model_validate(raw[key])
    except ValidationError as exc:
        out.extend(_shape_problems(key, model, exc))
        return _without_unknown_fields(raw[key], model, exc)


@dataclass
class _Section(Generic[T]):
    """The entries of a list section that validated (with their index), and what is left of
    those that did not: their raw data and codes, so later checks don't report them twice."""

    entries: list[tuple[int, T]] = field(default_factory=list)
    broken: list[Any] = field(default_factory=list)
    broken_codes: set[str] = field(default_factory=set)
    complete: bool = True


def _many(
    raw: Mapping[str, Any], key: str, model: type[M], out: list[CatalogProblem]
) -> _Section[M]:
    section: _Section[M] = _Section()
    if key not in raw:
        out.append(CatalogProblem(key, "required section is missing"))
        section.complete = False
        return section
    value = raw[key]
    if not isinstance(value, list):
        out.append(CatalogProblem(key, f"must be a list, got {type(value).__name__}"))
        section.complete = False
        return section
    for i, entry in enumerate(value):
        try:
            section.entries.append((i, model.model_validate(entry)))
        except ValidationError as exc:
            out.extend(_shape_problems(f"{key}[{i}]", model, exc))
            # Only unknown fields wrong: check the rest of the entry too, so that one pass
            # still lists every problem.
            if (salvaged := _without_unknown_fields(entry, model, exc)) is not None:
                section.entries.append((i, salvaged))
                continue
            section.complete = False
            section.broken.append(entry)
            if (code := _raw_code(entry)) is not None:
                section.broken_codes.add(code)
    return section


def _without_unknown_fields(entry: Any, model: type[M], exc: ValidationError) -> M | None:
    errors = exc.errors(include_url=False)
    if any(err["type"] != "extra_forbidden" for err in errors):
        return None
    cleaned = copy.deepcopy(entry)
    for err in errors:
        *parents, name = err["loc"]
        node = cleaned
        for part in parents:
            node = node[part]
        node.pop(name, None)
    try:
        return model.model_validate(cleaned)
    except ValidationError:
        return None


def _duplicates(
    entries: Iterable[tuple[str, T]], key: Callable[[T], str], what: str, out: list[CatalogProblem]
) -> dict[str, T]:
    """First entry per code; every later one with the same code is a problem."""
    seen: dict[str, tuple[str, T]] = {}
    for path, entry in entries:
        code = key(entry)
        if code in seen:
            out.append(
                CatalogProblem(path, f"duplicate {what} {code!r} (first at {seen[code][0]})")
            )
        else:
            seen[code] = (path, entry)
    return {code: entry for code, (_, entry) in seen.items()}


def validate_catalog(raw: Any) -> tuple[Catalog | None, list[CatalogProblem]]:
    """Check a whole catalog. Returns (catalog, []) when it is sound, else (None, every problem
    found, shape and cross-reference alike, section by section in file order)."""
    out: list[CatalogProblem] = []
    if not isinstance(raw, Mapping):
        return None, [CatalogProblem("", "a catalog is a mapping of its sections")]
    for key in raw:
        if key not in Catalog.model_fields:
            known = ", ".join(Catalog.model_fields)
            out.append(
                CatalogProblem(str(key), f"unknown section {key!r}; known sections: {known}")
            )

    city = _one(raw, "city", City, out)
    districts = _many(raw, "districts", District, out)
    offices = _many(raw, "offices", Office, out)
    departments = _many(raw, "departments", Department, out)
    calendar = _one(raw, "calendar", Calendar, out)
    items = _many(raw, "items", Item, out)
    bundles = _many(raw, "bundles", Bundle, out) if "bundles" in raw else _Section[Bundle]()

    divisions = _check_divisions(raw, city, districts, out)
    office_levels = _check_offices(offices, divisions, out)
    municipal_departments = _check_departments(departments, divisions, out)
    if calendar is not None:
        _check_calendar(calendar, out)
    _check_items(
        items,
        departments=departments,
        municipal_departments=municipal_departments,
        office_levels=office_levels if offices.complete else None,
        out=out,
    )
    _check_bundles(
        bundles,
        items=items,
        departments=departments,
        office_levels=office_levels if offices.complete else None,
        out=out,
    )

    if out:
        out.sort(key=_file_order)
        return None, out
    try:
        return Catalog.model_validate(raw), []
    except ValidationError as exc:  # defensive: the section checks above should catch all
        return None, _shape_problems("", Catalog, exc)


_SECTION_ORDER = {name: i for i, name in enumerate(Catalog.model_fields)}
_PATH_HEAD = re.compile(r"([^.\[]*)(?:\[(\d+)\])?")


def _file_order(problem: CatalogProblem) -> tuple[int, int]:
    """Section, then entry, as in the file (a stable sort keeps the rest as found)."""
    match = _PATH_HEAD.match(problem.path)
    section, index = match.groups() if match else ("", None)
    return _SECTION_ORDER.get(section, -1), int(index) if index is not None else -1


@dataclass
class _Divisions:
    levels: dict[str, Level] = field(default_factory=dict)
    # Codes of entries that failed validation: a reference to them is not reported again.
    unverifiable: set[str] = field(default_factory=set)

    def problem(
        self, path: str, division: str, expected: Level, what: str
    ) -> CatalogProblem | None:
        level = self.levels.get(division)
        if level is None:
            if division in self.unverifiable:
                return None
            return CatalogProblem(
                path, f"unknown division {division!r}: not the city, a district or a street"
            )
        if level is not expected:
            return CatalogProblem(
                path,
                f"{what} must be in a {expected.value} division; {division!r} is a {level.value}",
            )
        return None


def _check_divisions(
    raw: Mapping[str, Any],
    city: City | None,
    districts: _Section[District],
    out: list[CatalogProblem],
) -> _Divisions:
    """Division codes are one namespace (city, districts, streets): a code names one place."""
    divisions = _Divisions()
    where: dict[str, str] = {}

    def claim(code: str, level: Level, path: str, what: str) -> None:
        if code in divisions.levels:
            out.append(
                CatalogProblem(path, f"duplicate {what} code {code!r} (first at {where[code]})")
            )
            return
        divisions.levels[code] = level
        where[code] = path

    if city is not None:
        claim(city.code, Level.municipal, "city.code", "division")
    elif (code := _raw_code(raw.get("city"))) is not None:
        divisions.unverifiable.add(code)
    for i, district in districts.entries:
        claim(district.code, Level.district, f"districts[{i}].code", "district")
        for j, street in enumerate(district.streets):
            claim(street.code, Level.street, f"districts[{i}].streets[{j}].code", "street")
    for entry in districts.broken:
        streets = entry.get("streets") if isinstance(entry, Mapping) else None
        for part in [entry, *(streets if isinstance(streets, list) else [])]:
            if (code := _raw_code(part)) is not None:
                divisions.unverifiable.add(code)
    return divisions


def _check_offices(
    offices: _Section[Office], divisions: _Divisions, out: list[CatalogProblem]
) -> set[Level]:
    """Returns the levels at which the city has at least one office."""
    _duplicates(
        ((f"offices[{i}].code", o) for i, o in offices.entries), lambda o: o.code, "office", out
    )
    present: set[Level] = set()
    for i, office in offices.entries:
        expected = OFFICE_LEVEL[office.kind]
        present.add(expected)
        problem = divisions.problem(
            f"offices[{i}].division", office.division, expected, f"a {office.kind.value}"
        )
        if problem:
            out.append(problem)
    return present


def _check_departments(
    departments: _Section[Department], divisions: _Divisions, out: list[CatalogProblem]
) -> dict[str, Department]:
    """Returns the municipal departments by code (item owners must be among them)."""
    by_code = _duplicates(
        ((f"departments[{i}].code", d) for i, d in departments.entries),
        lambda d: d.code,
        "department",
        out,
    )
    units: dict[tuple[str, Level, str], str] = {}
    for i, dept in departments.entries:
        problem = divisions.problem(
            f"departments[{i}].division",
            dept.division,
            dept.level,
            f"a {dept.level.value} department",
        )
        if problem:
            out.append(problem)
        unit = (dept.line, dept.level, dept.division)
        if unit in units and units[unit] != dept.code:
            out.append(
                CatalogProblem(
                    f"departments[{i}]",
                    f"two departments of the {dept.line!r} line at {dept.level.value} level in "
                    f"{dept.division!r} ({units[unit]!r} and {dept.code!r}): routing would be "
                    "ambiguous",
                )
            )
        units.setdefault(unit, dept.code)
    return {c: d for c, d in by_code.items() if d.level is Level.municipal}


def _check_calendar(calendar: Calendar, out: list[CatalogProblem]) -> None:
    for name in ("holidays", "workdays"):
        seen: set[date] = set()
        for i, day in enumerate(getattr(calendar, name)):
            if day in seen:
                out.append(CatalogProblem(f"calendar.{name}[{i}]", f"{day} is listed twice"))
            seen.add(day)
    holidays = set(calendar.holidays)
    for i, day in enumerate(calendar.workdays):
        if day in holidays:
            out.append(
                CatalogProblem(f"calendar.workdays[{i}]", f"{day} is both a holiday and a workday")
            )


def _check_items(
    items: _Section[Item],
    *,
    departments: _Section[Department],
    municipal_departments: Mapping[str, Department],
    office_levels: set[Level] | None,
    out: list[CatalogProblem],
) -> None:
    _duplicates(
        ((f"items[{i}].code", it) for i, it in items.entries), lambda it: it.code, "item", out
    )
    all_departments = {d.code: d for _, d in departments.entries}
    for i, item in items.entries:
        at = f"items[{i}]"
        if item.owner not in municipal_departments:
            _check_owner(item, at, all_departments, departments.broken_codes, out)
        _check_delegation(item, at, out)
        if office_levels is not None:
            _check_intake(item, at, office_levels, out)
        _check_time_limits(item, at, out)
        _check_fewer_materials(item, at, out)
        _duplicates(
            ((f"{at}.materials[{j}].code", m) for j, m in enumerate(item.materials)),
            lambda m: m.code,
            "material",
            out,
        )


def _check_owner(
    item: Item,
    at: str,
    all_departments: Mapping[str, Department],
    broken_codes: set[str],
    out: list[CatalogProblem],
) -> None:
    """An owner that is not a municipal department: another level's, or unknown."""
    if item.owner in all_departments:
        level = all_departments[item.owner].level.value
        out.append(
            CatalogProblem(
                f"{at}.owner",
                f"owner {item.owner!r} is a {level} department; an item is owned by a "
                "municipal department",
            )
        )
    elif item.owner not in broken_codes:
        out.append(CatalogProblem(f"{at}.owner", f"unknown department {item.owner!r}"))


def _check_delegation(item: Item, at: str, out: list[CatalogProblem]) -> None:
    """A delegated item names the level it is delegated to (below the city); no other does."""
    if item.mode is Mode.delegated:
        if item.delegated_to is None:
            out.append(
                CatalogProblem(
                    f"{at}.delegated_to",
                    "a delegated item names delegated_to: district or street",
                )
            )
        elif item.delegated_to is Level.municipal:
            out.append(CatalogProblem(f"{at}.delegated_to", "delegated_to is district or street"))
    elif item.delegated_to is not None:
        out.append(
            CatalogProblem(
                f"{at}.delegated_to",
                f"only a delegated item names delegated_to (this one is {item.mode.value})",
            )
        )


def _check_intake(
    item: Item, at: str, office_levels: set[Level], out: list[CatalogProblem]
) -> None:
    """Every intake level has an office of its kind, and a counter item has a counter."""
    _check_intake_levels(item.intake_levels, at, office_levels, out)
    takers = (effective_intake_levels(item) | {Level.municipal}) & office_levels
    if item.mode is not Mode.online and not takers:
        out.append(CatalogProblem(at, "no office in the city may take this item at a counter"))


def _check_intake_levels(
    levels: list[Level] | None, at: str, office_levels: set[Level], out: list[CatalogProblem]
) -> None:
    """Every intake level named (an item's or a bundle's window) has an office of its kind."""
    for j, level in enumerate(levels or ()):
        if level not in office_levels:
            out.append(
                CatalogProblem(
                    f"{at}.intake_levels[{j}]",
                    f"no {LEVEL_OFFICE[level].value} office in the city takes "
                    f"{level.value}-level intake",
                )
            )


def _check_fewer_materials(item: Item, at: str, out: list[CatalogProblem]) -> None:
    """Commitment and deferral stand in for a material the item requires (DESIGN.md §7); an
    item names the e-licence type it issues only when it issues an e-licence."""
    for j, material in enumerate(item.materials):
        for flag, what in (("commitment", "a commitment"), ("deferrable", "deferral")):
            if getattr(material, flag) and not material.required:
                out.append(
                    CatalogProblem(
                        f"{at}.materials[{j}].{flag}",
                        f"only a required material can allow {what}; {material.code!r} is optional",
                    )
                )
    if item.result.license_type is not None and not item.result.e_license:
        out.append(
            CatalogProblem(
                f"{at}.result.license_type",
                "an item names the e-licence type it issues only with e_license: true",
            )
        )


def catalog_warnings(catalog: Catalog) -> list[CatalogProblem]:
    """What is allowed but worth a look in a sound catalog: a material that accepts an
    e-licence type no item of this catalog issues (licences may come from outside the city,
    so it is not an error)."""
    issued = {item.result.license_type for item in catalog.items if item.result.license_type}
    return [
        CatalogProblem(
            f"items[{i}].materials[{j}].license_type",
            f"no item of this catalog issues e-licences of type {material.license_type!r}: "
            "applicants can only reuse licences of that type issued elsewhere",
        )
        for i, item in enumerate(catalog.items)
        for j, material in enumerate(item.materials)
        if material.license_type is not None and material.license_type not in issued
    ]


def _check_time_limits(item: Item, at: str, out: list[CatalogProblem]) -> None:
    if item.time_limit_days < 0:
        out.append(CatalogProblem(f"{at}.time_limit_days", "must not be negative"))
    if (
        item.effective_from is not None
        and item.effective_to is not None
        and item.effective_to < item.effective_from
    ):
        out.append(
            CatalogProblem(
                f"{at}.effective_to",
                f"{item.effective_to} is before effective_from {item.effective_from}",
            )
        )


# -- bundles (一件事一次办, DESIGN.md §8) ---------------------------------------------------------


def _check_bundles(
    bundles: _Section[Bundle],
    *,
    items: _Section[Item],
    departments: _Section[Department],
    office_levels: set[Level] | None,
    out: list[CatalogProblem],
) -> None:
    """Every bundle refers to what the catalog holds: a known lead department, member items of
    its category in force whenever it is, `after` among its members without a cycle, `when`
    over its declared questions with answers they allow."""
    _duplicates(
        ((f"bundles[{i}].code", b) for i, b in bundles.entries), lambda b: b.code, "bundle", out
    )
    known_items = {it.code: it for _, it in items.entries}
    known_departments = {d.code for _, d in departments.entries}
    for i, bundle in bundles.entries:
        at = f"bundles[{i}]"
        if bundle.lead not in known_departments and bundle.lead not in departments.broken_codes:
            out.append(CatalogProblem(f"{at}.lead", f"unknown department {bundle.lead!r}"))
        _check_window(bundle.effective_from, bundle.effective_to, at, out)
        if office_levels is not None:
            _check_intake_levels(bundle.intake_levels, at, office_levels, out)
        questions = _check_questions(bundle, at, out)
        _check_members(bundle, at, known_items, items.broken_codes, questions, out)
        _check_after(bundle, at, out)


def _check_window(start: date | None, end: date | None, at: str, out: list[CatalogProblem]) -> None:
    if start is not None and end is not None and end < start:
        out.append(CatalogProblem(f"{at}.effective_to", f"{end} is before effective_from {start}"))


def _check_questions(bundle: Bundle, at: str, out: list[CatalogProblem]) -> dict[str, Question]:
    questions = _duplicates(
        ((f"{at}.questions[{j}].code", q) for j, q in enumerate(bundle.questions)),
        lambda q: q.code,
        "question",
        out,
    )
    for j, question in enumerate(bundle.questions):
        where = f"{at}.questions[{j}].options"
        if question.type is QuestionType.choice and len(set(question.options)) < 2:
            out.append(CatalogProblem(where, "a choice question offers at least two options"))
        if question.type is QuestionType.boolean and question.options:
            out.append(CatalogProblem(where, "a boolean question is answered true or false"))
    return questions


def _answer_problem(question: Question, answer: bool | str) -> str | None:
    if question.type is QuestionType.boolean and not isinstance(answer, bool):
        return f"question {question.code!r} is answered true or false, not {answer!r}"
    if question.type is QuestionType.choice and answer not in question.options:
        options = ", ".join(question.options)
        return f"question {question.code!r} is answered with one of {options}, not {answer!r}"
    return None


def _check_members(
    bundle: Bundle,
    at: str,
    known_items: Mapping[str, Item],
    broken_items: set[str],
    questions: Mapping[str, Question],
    out: list[CatalogProblem],
) -> None:
    _duplicates(
        ((f"{at}.members[{j}].item", m) for j, m in enumerate(bundle.members)),
        lambda m: m.item,
        "member",
        out,
    )
    for j, member in enumerate(bundle.members):
        where = f"{at}.members[{j}]"
        item = known_items.get(member.item)
        if item is None:
            if member.item not in broken_items:
                out.append(CatalogProblem(f"{where}.item", f"unknown item {member.item!r}"))
        else:
            if item.category is not bundle.category:
                out.append(
                    CatalogProblem(
                        f"{where}.item",
                        f"item {member.item!r} is for category {item.category.value}; the "
                        f"bundle is for {bundle.category.value}",
                    )
                )
            if (why := _not_in_force_within(item, bundle)) is not None:
                out.append(CatalogProblem(f"{where}.item", why))
        for question, answer in member.when.items():
            if question not in questions:
                out.append(
                    CatalogProblem(
                        f"{where}.when.{question}",
                        f"undeclared question {question!r}; declare it under questions",
                    )
                )
            elif (why := _answer_problem(questions[question], answer)) is not None:
                out.append(CatalogProblem(f"{where}.when.{question}", why))


def _not_in_force_within(item: Item, bundle: Bundle) -> str | None:
    """A member item is in force whenever its bundle is: else the bundle would be offered on
    days one of its members cannot be taken."""
    # A bundle without a start is offered once all its members are in force (intake checks
    # each day); one with a start promises every member from then.
    if (
        item.effective_from is not None
        and bundle.effective_from is not None
        and item.effective_from > bundle.effective_from
    ):
        return (
            f"item {item.code!r} is in force only from {item.effective_from}; the bundle is "
            f"from {bundle.effective_from}"
        )
    if item.effective_to is not None and (
        bundle.effective_to is None or item.effective_to < bundle.effective_to
    ):
        until = bundle.effective_to or "open-ended"
        return (
            f"item {item.code!r} is in force only until {item.effective_to}; the bundle is "
            f"until {until}"
        )
    return None


def _check_after(bundle: Bundle, at: str, out: list[CatalogProblem]) -> None:
    """`after` names other members; no cycle; a prerequisite is created whenever its dependent
    is (its `when` is part of the dependent's), or the dependent would wait for ever."""
    members = {m.item: m for m in bundle.members}
    for j, member in enumerate(bundle.members):
        for k, before in enumerate(member.after):
            where = f"{at}.members[{j}].after[{k}]"
            if before == member.item:
                out.append(CatalogProblem(where, f"member {before!r} cannot wait for itself"))
            elif before not in members:
                out.append(CatalogProblem(where, f"{before!r} is not a member of this bundle"))
            elif any(member.when.get(q) != a for q, a in members[before].when.items()):
                out.append(
                    CatalogProblem(
                        where,
                        f"{before!r} is created only when {members[before].when}, but "
                        f"{member.item!r} waits for it whatever the answers: give "
                        f"{member.item!r} the same conditions",
                    )
                )
    if (cycle := _cycle(members)) is not None:
        out.append(CatalogProblem(f"{at}.members", "after has a cycle: " + " -> ".join(cycle)))


def _cycle(members: Mapping[str, BundleMember]) -> list[str] | None:
    """One cycle of `after` among the members (as a path back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(code: str, path: list[str]) -> list[str] | None:
        state[code] = 1
        for before in members[code].after:
            if before not in members or before == code:
                continue  # reported on its own
            if state.get(before) == 1:
                return [*path[path.index(before) :], before] if before in path else [code, before]
            if state.get(before) is None and (found := visit(before, [*path, before])):
                return found
        state[code] = 2
        return None

    for code in members:
        if state.get(code) is None and (found := visit(code, [code])):
            return found
    return None
