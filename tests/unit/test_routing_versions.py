"""Which catalog version routes a case: the one in force at its submission (pure)."""

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from contracts.events import CaseSubmitted, CatalogPublished
from services.common.catalog_follower import CatalogFollower
from services.common.settings import CommonSettings
from services.policy.catalog_index import CatalogIndex
from services.routing.domain.versions import VersionTimeline, version_in_force
from services.routing.handlers import build_index, decide
from tests.unit.catalog_data import application, base_catalog

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 15, 1, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


LOADED = {1: at(0), 2: at(10), 3: at(20)}


@dataclass(frozen=True)
class Loaded:
    loaded_at: datetime


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        (-5, 1),  # before every version: the oldest
        (0, 1),  # loaded at the very instant: in force
        (9.99, 1),
        (10, 2),
        (15, 2),
        (20, 3),
        (10_000, 3),  # after the last load: the latest
    ],
)
def test_version_in_force_at_submission(minutes: float, expected: int) -> None:
    assert version_in_force(LOADED, at(minutes)) == expected
    assert VersionTimeline().select({v: Loaded(t) for v, t in LOADED.items()}, at(minutes)) == (
        expected
    )


def test_no_version_loaded() -> None:
    assert version_in_force({}, at(0)) is None
    assert VersionTimeline().select({}, at(0)) is None


def test_newest_number_wins_when_load_times_disagree_with_numbers() -> None:
    # Clocks of two routing replicas may disagree a little: version 3 stamped before 2.
    loaded = {1: at(0), 2: at(10), 3: at(9)}
    assert version_in_force(loaded, at(9.5)) == 3
    assert version_in_force(loaded, at(8)) == 1
    timeline = VersionTimeline()
    assert timeline.select({v: Loaded(t) for v, t in loaded.items()}, at(9.5)) == 3


def test_timeline_matches_the_pure_function_and_follows_new_versions() -> None:
    rng = random.Random(7)
    versions: dict[int, Loaded] = {}
    timeline = VersionTimeline()
    for version in range(1, 40):
        versions[version] = Loaded(at(version * 10 + rng.uniform(-8, 8)))
        plain = {v: loaded.loaded_at for v, loaded in versions.items()}
        for _ in range(20):
            when = at(rng.uniform(-20, 420))
            assert timeline.select(versions, when) == version_in_force(plain, when)


# --------------------------------------------------------------------------- decide


def follower_with(
    *loads: tuple[dict[str, object], datetime],
) -> CatalogFollower[tuple[int, CatalogIndex]]:
    follower = CatalogFollower(CommonSettings(service="test"), build_index)
    for version, (raw, loaded_at) in enumerate(loads, start=1):
        follower.apply(CatalogPublished(version=version, loaded_at=loaded_at, catalog=raw))
    return follower


def submitted(item: str, when: datetime) -> CaseSubmitted:
    return CaseSubmitted(
        case_id="C-1",
        application=application(item, office="T1-DC", division="T1"),
        submitted_at=when,
    )


def test_a_case_is_routed_by_the_version_in_force_at_its_submission() -> None:
    without = base_catalog()
    without["items"] = [i for i in without["items"] if i["code"] != "DEL-D"]
    follower = follower_with((base_catalog(), at(0)), (without, at(10)), (base_catalog(), at(20)))

    before_removal = decide(follower, submitted("DEL-D", at(5)))
    assert before_removal is not None and before_removal.ok
    assert before_removal.catalog_version == 1 and before_removal.inputs["catalog_version"] == "1"

    while_removed = decide(follower, submitted("DEL-D", at(15)))
    assert while_removed is not None and while_removed.failure is not None
    assert (while_removed.rule, while_removed.catalog_version) == ("R1-unknown-item", 2)

    # Routed late (after version 3 was loaded), still by version 2: the submission decides.
    assert follower.latest_version == 3
    assert decide(follower, submitted("DEL-D", at(15))) == while_removed

    # An explicit version (an operator's retry routes by the version in force now).
    retried = decide(follower, submitted("DEL-D", at(15)), version=follower.latest_version)
    assert retried is not None and retried.ok and retried.catalog_version == 3


def test_decide_without_any_catalog() -> None:
    assert decide(follower_with(), submitted("DEL-D", at(0))) is None
