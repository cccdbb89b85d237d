"""A compact catalog for the unit tests, independent of the demo one, so the rules are exercised
on a city they were not written against. `base_catalog()` returns fresh raw data to mutate.

City T: districts T1 (streets T11, T12), T2 (street T21), T3 (street T31, no offices at all).
Market line: municipal + T1, T2 (none in T3). Social line: municipal + streets T11, T21 (none in
T12). Housing line: municipal only.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from stdnum.cn import ric, uscc

from contracts.catalog import Catalog
from contracts.common import Applicant, Application, Category, Channel, Delivery, Material
from services.common.catalog import validate_catalog
from services.policy.catalog_index import CatalogIndex

_BASE: dict[str, Any] = {
    "city": {"code": "T", "name": "测试市"},
    "districts": [
        {
            "code": "T1",
            "name": "一区",
            "streets": [{"code": "T11", "name": "一一街道"}, {"code": "T12", "name": "一二街道"}],
        },
        {"code": "T2", "name": "二区", "streets": [{"code": "T21", "name": "二一街道"}]},
        {"code": "T3", "name": "三区", "streets": [{"code": "T31", "name": "三一街道"}]},
    ],
    "offices": [
        {"code": "T-MC", "kind": "municipal_center", "division": "T"},
        {"code": "T1-DC", "kind": "district_center", "division": "T1"},
        {"code": "T2-DC", "kind": "district_center", "division": "T2"},
        {"code": "T11-SC", "kind": "street_center", "division": "T11"},
        {"code": "T12-SC", "kind": "street_center", "division": "T12"},
        {"code": "T21-SC", "kind": "street_center", "division": "T21"},
    ],
    "departments": [
        {
            "code": "M-MKT",
            "name": "市场局",
            "line": "market",
            "level": "municipal",
            "division": "T",
        },
        {
            "code": "M-SOC",
            "name": "人社局",
            "line": "social",
            "level": "municipal",
            "division": "T",
        },
        {
            "code": "M-HOU",
            "name": "住建局",
            "line": "housing",
            "level": "municipal",
            "division": "T",
        },
        {
            "code": "T1-MKT",
            "name": "一区市场局",
            "line": "market",
            "level": "district",
            "division": "T1",
        },
        {
            "code": "T2-MKT",
            "name": "二区市场局",
            "line": "market",
            "level": "district",
            "division": "T2",
        },
        {
            "code": "T11-SOC",
            "name": "一一社区中心",
            "line": "social",
            "level": "street",
            "division": "T11",
        },
        {
            "code": "T21-SOC",
            "name": "二一社区中心",
            "line": "social",
            "level": "street",
            "division": "T21",
        },
    ],
    "calendar": {
        "covers_until": "2027-12-31",
        "holidays": ["2026-10-01", "2026-10-02", "2026-10-05", "2026-10-06", "2026-10-07"],
        "workdays": ["2026-10-10"],
    },
    "items": [
        {
            "code": "ONL-E",
            "name": "网办企业事项",
            "category": "enterprise",
            "owner": "M-MKT",
            "mode": "online",
            "time_limit_days": 3,
            "materials": [{"code": "A", "name": "申请书", "required": True}],
            "result": {"kind": "notice", "e_license": False},
        },
        {
            "code": "ONL-I",
            "name": "网办个人事项",
            "category": "individual",
            "owner": "M-SOC",
            "mode": "online",
            "instant": True,
            "result": {"kind": "certificate", "e_license": True},
        },
        {
            "code": "DEL-D",
            "name": "下放区级企业事项",
            "category": "enterprise",
            "owner": "M-MKT",
            "mode": "delegated",
            "delegated_to": "district",
            "time_limit_days": 5,
            "materials": [
                {"code": "A", "name": "申请书", "required": True},
                {"code": "B", "name": "营业执照", "required": True},
                {"code": "C", "name": "平面图", "required": False},
            ],
            "result": {"kind": "licence", "e_license": True},
            "effective_from": "2026-01-01",
        },
        {
            "code": "DEL-S",
            "name": "下放街镇个人事项",
            "category": "individual",
            "owner": "M-SOC",
            "mode": "delegated",
            "delegated_to": "street",
            "instant": True,
            "time_limit_days": 0,
            "materials": [{"code": "ID", "name": "身份证", "required": True}],
            "result": {"kind": "certificate", "e_license": True},
        },
        {
            "code": "ENT-I",
            "name": "委托收件个人事项",
            "category": "individual",
            "owner": "M-HOU",
            "mode": "entrusted",
            "intake_levels": ["street", "district"],
            "time_limit_days": 20,
            "result": {"kind": "decision_letter", "e_license": False},
        },
        {
            "code": "ENT-E",
            "name": "委托收件企业事项",
            "category": "enterprise",
            "owner": "M-HOU",
            "mode": "entrusted",
            "time_limit_days": 15,
        },
        {
            "code": "MUN-E",
            "name": "市级企业事项",
            "category": "enterprise",
            "owner": "M-HOU",
            "mode": "municipal",
            "time_limit_days": 20,
        },
        {
            "code": "MUN-X",
            "name": "市级事项（区级可收）",
            "category": "enterprise",
            "owner": "M-HOU",
            "mode": "municipal",
            "intake_levels": ["district"],
            "time_limit_days": 20,
        },
        {
            "code": "FUT",
            "name": "未生效事项",
            "category": "enterprise",
            "owner": "M-MKT",
            "mode": "online",
            "time_limit_days": 1,
            "effective_from": "2030-01-01",
        },
        {
            "code": "OLD",
            "name": "已废止事项",
            "category": "enterprise",
            "owner": "M-MKT",
            "mode": "online",
            "time_limit_days": 1,
            "effective_from": "2020-01-01",
            "effective_to": "2025-12-31",
        },
    ],
}

TODAY = date(2026, 6, 15)
_CATEGORY = {item["code"]: item["category"] for item in _BASE["items"]}


def base_catalog() -> dict[str, Any]:
    return copy.deepcopy(_BASE)


def partner_catalog() -> dict[str, Any]:
    """Partner region P (the city code of its catalog): district P1 with street P11; DEL-D
    under the same code as city T's but cross_region here, XR-E cross_region, LOC-E not, and
    XR-F cross_region but not yet in force."""
    raw = base_catalog()
    raw["city"] = {"code": "P", "name": "伙伴市"}
    raw["districts"] = [
        {"code": "P1", "name": "伙一区", "streets": [{"code": "P11", "name": "伙一一街道"}]}
    ]
    raw["offices"] = [{"code": "P-MC", "kind": "municipal_center", "division": "P"}]
    raw["departments"] = [
        {
            "code": "P-MKT",
            "name": "伙伴市场局",
            "line": "market",
            "level": "municipal",
            "division": "P",
        },
        {
            "code": "P1-MKT",
            "name": "伙一区市场局",
            "line": "market",
            "level": "district",
            "division": "P1",
        },
    ]
    shared = {"category": "enterprise", "owner": "P-MKT", "mode": "municipal"}
    raw["items"] = [
        {
            **shared,
            "code": "DEL-D",
            "name": "伙伴同码事项",
            "time_limit_days": 9,
            "scope": "cross_region",
        },
        {
            **shared,
            "code": "XR-E",
            "name": "跨省通办事项",
            "time_limit_days": 12,
            "scope": "cross_region",
        },
        {**shared, "code": "LOC-E", "name": "本地事项", "time_limit_days": 4},
        {
            **shared,
            "code": "XR-F",
            "name": "未生效跨省事项",
            "time_limit_days": 4,
            "scope": "cross_region",
            "effective_from": "2030-01-01",
        },
    ]
    return raw


def catalog(raw: dict[str, Any] | None = None) -> Catalog:
    parsed, problems = validate_catalog(raw if raw is not None else base_catalog())
    assert problems == [], problems
    assert parsed is not None
    return parsed


def index(raw: dict[str, Any] | None = None) -> CatalogIndex:
    return CatalogIndex(catalog(raw))


def resident_id(body: str = "11010519491231002") -> str:
    """A resident ID number with a correct GB 11643 check character."""
    return body + ric.calc_check_digit(body + "0")


def credit_code(body: str = "91350100M000100Y4") -> str:
    """A unified social credit code with a correct GB 32100 check character."""
    return body + uscc.calc_check_digit(body)


def application(
    item_code: str,
    *,
    office: str | None = None,
    channel: Channel | None = None,
    division: str = "T11",
    category: Category | None = None,
    id_number: str | None = None,
    materials: tuple[str, ...] = (),
    delivery: Delivery | None = None,
) -> Application:
    """A sound application; the applicant's category follows the item's unless told."""
    if category is None:
        category = Category(_CATEGORY.get(item_code, "individual"))
    if id_number is None:
        id_number = credit_code() if category is Category.enterprise else resident_id()
    return Application(
        item_code=item_code,
        channel=channel or (Channel.counter if office else Channel.online),
        office_code=office,
        applicant=Applicant(
            category=category, name="申请人", id_number=id_number, division_code=division
        ),
        materials=[Material(code=c) for c in materials],
        delivery=delivery or Delivery(method="electronic"),
    )
