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
    return {
        "item_code": item["code"],
        "channel": channel,
        "office_code": office,
        "applicant": {
            "category": item["category"],
            "name": company_name(rng, catalog["city"]["name"]) if enterprise else person_name(rng),
            "id_number": credit_code(rng) if enterprise else resident_id(rng),
            "phone": phone(rng),
            # An enterprise may be registered by district only, unless the item is decided
            # at street level, which needs the street.
            "division_code": district
            if enterprise and item.get("delegated_to") != "street" and rng.random() < 0.5
            else street,
        },
        "materials": materials,
        "delivery": {
            "method": method,
            "address": f"{catalog['city']['name']}某路{rng.randint(1, 999)}号"
            if method == "postal"
            else None,
        },
    }
