"""Realistic applicants and applications for a catalog: used by `tongban demo` and the tests.

Generated from the catalog's own structure (divisions, offices, item rules), never from
hard-coded codes, so they work for any city's catalog.
"""

from __future__ import annotations

import hashlib
import random
from datetime import date
from typing import Any

from stdnum.cn import ric, uscc

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀英华"
COMPANY_WORDS = ["云帆", "嘉禾", "鼎盛", "瑞丰", "恒通", "新桥", "青禾", "海纳"]
COMPANY_KINDS = ["餐饮管理有限公司", "商贸有限公司", "建筑工程有限公司", "科技有限公司"]
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def resident_id(rng: random.Random, region: str = "110105") -> str:
    """A GB 11643 resident ID number with a valid checksum."""
    born = date(rng.randint(1955, 2004), rng.randint(1, 12), rng.randint(1, 28))
    body = f"{region}{born:%Y%m%d}{rng.randint(0, 999):03d}"
    return body + ric.calc_check_digit(body + "0")


def credit_code(rng: random.Random, region: str = "110105") -> str:
    """A GB 32100 unified social credit code with a valid checksum."""
    organisation = "".join(rng.choice(USCC_ALPHABET) for _ in range(9))
    body = f"91{region}{organisation}"
    return body + str(uscc.calc_check_digit(body))


def phone(rng: random.Random) -> str:
    return f"1{rng.choice('3589')}{rng.randint(0, 999_999_999):09d}"


def person_name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))


def company_name(rng: random.Random, city_name: str) -> str:
    return city_name.removesuffix("市") + rng.choice(COMPANY_WORDS) + rng.choice(COMPANY_KINDS)


def default_intake_levels(item: dict[str, Any]) -> list[str]:
    levels = item.get("intake_levels")
    if levels:
        return list(levels)
    return ["district"] if item["category"] == "enterprise" else ["street"]


OFFICE_LEVEL = {
    "municipal_center": "municipal",
    "district_center": "district",
    "street_center": "street",
}


def streets(catalog: dict[str, Any]) -> list[tuple[str, str]]:
    """(district code, street code) of every street."""
    return [(d["code"], s["code"]) for d in catalog["districts"] for s in d.get("streets", [])]


def counter_office_for(
    catalog: dict[str, Any],
    item: dict[str, Any],
    district: str,
    street: str,
    rng: random.Random | None = None,
) -> str | None:
    """An office that may take the item at a counter: nearest the applicant first, or, given
    `rng`, any office of the right level in the city (同城通办: taken anywhere)."""
    if item["mode"] == "online":
        levels = ["street", "district", "municipal"]
    elif item["mode"] == "municipal":
        levels = ["municipal"]  # no basic-level path yet: the municipal center only
    else:
        levels = default_intake_levels(item) + ["municipal"]
    return _office_at(catalog, levels, district, street, rng)


def _office_at(
    catalog: dict[str, Any],
    levels: list[str],
    district: str,
    street: str,
    rng: random.Random | None,
) -> str | None:
    """The first level of `levels` with an office: the applicant's own, or any given `rng`."""
    for level in levels:
        candidates: list[str] = []
        for office in catalog["offices"]:
            if OFFICE_LEVEL[office["kind"]] != level:
                continue
            division = office["division"]
            if level == "municipal" or rng is not None or division in (district, street):
                candidates.append(str(office["code"]))
        if candidates:
            return rng.choice(candidates) if rng is not None else candidates[0]
    return None


def application_for(
    catalog: dict[str, Any],
    item: dict[str, Any],
    rng: random.Random,
    *,
    channel: str | None = None,
    delivery: str | None = None,
    complete: bool = True,
    district: str | None = None,
    street: str | None = None,
    office_anywhere: bool = False,
) -> dict[str, Any]:
    """A valid submission body for `item` by an applicant living in the city."""
    choices = streets(catalog)
    if district is None or street is None:
        district, street = rng.choice(choices)
    enterprise = item["category"] == "enterprise"
    if channel is None:
        channel = "online" if item["mode"] == "online" and rng.random() < 0.5 else "counter"
    office = (
        counter_office_for(catalog, item, district, street, rng if office_anywhere else None)
        if channel == "counter"
        else None
    )
    method = delivery or rng.choice(
        ["electronic", "postal"] + (["counter_pickup"] if channel == "counter" else [])
    )
    materials = [
        {
            "code": m["code"],
            "sha256": hashlib.sha256(f"{m['code']}{rng.random()}".encode()).hexdigest(),
        }
        for m in item.get("materials", [])
        if complete or not m.get("required", True)
    ]
    applicant = applicant_for(catalog, item["category"], street, rng)
    # An enterprise may be registered by district only, unless the item is decided at street
    # level, which needs the street.
    if enterprise and item.get("delegated_to") != "street" and rng.random() < 0.5:
        applicant["division_code"] = district
    return {
        "item_code": item["code"],
        "channel": channel,
        "office_code": office,
        "applicant": applicant,
        "materials": materials,
        "delivery": delivery_for(catalog, method, rng),
    }


def applicant_for(
    catalog: dict[str, Any], category: str, division: str, rng: random.Random
) -> dict[str, Any]:
    """A person (resident ID) or a company (unified social credit code) of `division`."""
    enterprise = category == "enterprise"
    return {
        "category": category,
        "name": company_name(rng, catalog["city"]["name"]) if enterprise else person_name(rng),
        "id_number": credit_code(rng) if enterprise else resident_id(rng),
        "phone": phone(rng),
        "division_code": division,
    }


def delivery_for(catalog: dict[str, Any], method: str, rng: random.Random) -> dict[str, Any]:
    address = (
        f"{catalog['city']['name']}某路{rng.randint(1, 999)}号" if method == "postal" else None
    )
    return {"method": method, "address": address}


# -- bundles (一件事一次办, DESIGN.md §8) ---------------------------------------------------------


def default_answers(bundle: dict[str, Any], value: bool = True) -> dict[str, bool | str]:
    """An answer to every question of the bundle: `value` to the yes/no ones, the first
    option to the choice ones."""
    return {
        q["code"]: (value if q.get("type", "boolean") == "boolean" else q["options"][0])
        for q in bundle.get("questions", [])
    }


def created_members(bundle: dict[str, Any], answers: dict[str, bool | str]) -> list[dict[str, Any]]:
    """The members the answers include: every `when` answer matches (DESIGN.md §8)."""
    return [
        m
        for m in bundle["members"]
        if all(answers.get(q) == a for q, a in (m.get("when") or {}).items())
    ]


def prerequisites(bundle: dict[str, Any], item_code: str) -> set[str]:
    """Every member (item code) `item_code` waits for, directly or through another."""
    after = {m["item"]: m.get("after") or [] for m in bundle["members"]}
    found: set[str] = set()
    todo = list(after.get(item_code, []))
    while todo:
        code = todo.pop()
        if code not in found:
            found.add(code)
            todo += after.get(code, [])
    return found


def bundle_application_for(
    catalog: dict[str, Any],
    bundle: dict[str, Any],
    rng: random.Random,
    *,
    answers: dict[str, bool | str] | None = None,
    delivery: str = "counter_pickup",
    district: str | None = None,
    street: str | None = None,
) -> dict[str, Any]:
    """A complete `POST /v1/bundles` body at a counter of the bundle's window near the
    applicant: one set of materials, the union of the created members', except what a
    member's prerequisite issues as an e-licence (the member takes that licence when it is
    released: the applicant never brings it)."""
    if district is None or street is None:
        district, street = rng.choice(streets(catalog))
    answers = default_answers(bundle) if answers is None else answers
    items = {i["code"]: i for i in catalog["items"]}
    issued_by = {code: (items[code].get("result") or {}).get("license_type") for code in items}
    needed: dict[str, dict[str, Any]] = {}
    for member in created_members(bundle, answers):
        licences = {issued_by[p] for p in prerequisites(bundle, member["item"])} - {None}
        for material in items[member["item"]].get("materials", []):
            if material.get("license_type") not in licences:
                needed.setdefault(material["code"], material)
    office = _office_at(catalog, default_intake_levels(bundle), district, street, None)
    return {
        "bundle_code": bundle["code"],
        "channel": "counter",
        "office_code": office,
        # The street: a member may be decided at street level (派出所, 社区事务受理中心).
        "applicant": applicant_for(catalog, bundle["category"], street, rng),
        "answers": answers,
        "materials": [
            {"code": code, "sha256": hashlib.sha256(f"{code}{rng.random()}".encode()).hexdigest()}
            for code in needed
        ],
        "delivery": delivery_for(catalog, delivery, rng),
    }
