"""Refreshing findings: states kept until the evidence changes, resolved findings, scoped
refreshes, and the ``weird`` CLI command that prints them."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

import tagging.detectors.refresh as refresh_module
from db.engine import make_engine, make_session_factory
from db.findings import ignore_finding, list_findings
from db.models import Advertiser, Finding, FindingState, Role
from db.vocab import LEGACY_PLACEHOLDER
from tagging.detectors.refresh import BackgroundRefresh, recompute_findings
from tagging.errors import PermissionDenied
from tests.utils.factories import actor
from tests.utils.world import World, key_of, photos, refresh


def test_ignored_stays_ignored_until_its_evidence_changes(
    sessions: sessionmaker[Session],
) -> None:
    legacy = {"type": "Placeholder", "color": "N/A"}
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro Car Center")
        world.scrape(advertiser, [*photos("m", 4), {"name": "old1", **legacy}])
    (finding,) = refresh(sessions)
    with sessions.begin() as session:
        ignore_finding(session, actor(Role.ANALYST, "ana"), finding.id, "old cache, harmless")

    # A new scrape with the same evidence: still ignored, by whom and why kept.
    with sessions.begin() as session:
        World(session).scrape(
            session.get_one(Advertiser, advertiser.id),
            [*photos("m", 4), {"name": "old1", **legacy}],
        )
    assert refresh(sessions) == []
    with sessions() as session:
        (kept,) = list_findings(session, states=None)
    assert (kept.state, kept.state_by, kept.state_reason) == (
        FindingState.IGNORED,
        "ana",
        "old cache, harmless",
    )

    # One more legacy image: the evidence changed, the finding is open again.
    with sessions.begin() as session:
        World(session).scrape(
            session.get_one(Advertiser, advertiser.id),
            [*photos("m", 4), {"name": "old1", **legacy}, {"name": "old2", **legacy}],
        )
    (reopened,) = refresh(sessions)
    assert reopened.id == finding.id and reopened.state == FindingState.OPEN
    assert "reopened, the evidence changed (was ignored by ana: old cache, harmless)" in (
        reopened.state_reason or ""
    )
    assert reopened.evidence["count"] == 2


def test_a_finding_that_disappears_is_fixed_and_reopens_when_it_comes_back(
    sessions: sessionmaker[Session],
) -> None:
    legacy = [{"name": "old1", "type": "Placeholder", "color": "N/A"}]
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro Car Center")
        world.scrape(advertiser, photos("m", 4) + legacy)
    (first,) = refresh(sessions)
    for rows, expected in ((photos("m", 4), FindingState.FIXED), (photos("m", 4) + legacy, "open")):
        with sessions.begin() as session:
            World(session).scrape(session.get_one(Advertiser, advertiser.id), rows)
        refresh(sessions)
        with sessions() as session:
            assert session.get_one(Finding, first.id).state == expected


def test_an_advertiser_scoped_refresh_leaves_other_advertisers_findings(
    sessions: sessionmaker[Session],
) -> None:
    legacy = [{"name": "old", "type": "Placeholder", "color": "N/A"}]
    with sessions.begin() as session:
        world = World(session)
        metro, lakeside = world.advertiser("Metro"), world.advertiser("Lakeside")
        world.scrape(metro, photos("m", 3) + legacy)
        world.scrape(lakeside, [*photos("l", 3), {**legacy[0], "name": "old-l"}])
    assert len(refresh(sessions)) == 2
    with sessions.begin() as session:
        World(session).scrape(session.get_one(Advertiser, metro.id), photos("m", 3))
    remaining = refresh(sessions, advertiser_id=metro.id)
    assert [f.advertiser for f in remaining] == ["Lakeside"]


def test_cli_prints_open_findings_as_json_and_exits_0(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from tagging.cli.weird import add_weird_parser, cmd_weird

    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    engine = make_engine(sqlite_url)
    with make_session_factory(engine).begin() as session:
        world = World(session)
        world.scrape(
            world.advertiser("Metro"), [{"name": "o", "type": "Placeholder", "color": "N/A"}]
        )
        world.scrape(world.advertiser("Lakeside"), photos("l", 3))
    engine.dispose()
    parser = argparse.ArgumentParser()
    add_weird_parser(parser.add_subparsers(dest="command"))

    assert cmd_weird(parser.parse_args(["weird", "--json"])) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing computed yet
    assert cmd_weird(parser.parse_args(["weird", "--json", "--refresh"])) == 0
    (finding,) = json.loads(capsys.readouterr().out)
    assert finding["detector"] == LEGACY_PLACEHOLDER and finding["advertiser"] == "Metro"
    assert {"severity", "scrape_id", "explanation", "evidence"} <= set(finding)
    assert finding["evidence"]["images"][0]["image_key"] == key_of("o")

    assert cmd_weird(parser.parse_args(["weird", "Lakeside"])) == 0
    assert capsys.readouterr().out.strip() == "no open findings"
    assert cmd_weird(parser.parse_args(["weird", "metro"])) == 0
    assert "[warning] Legacy cached placeholder · Metro" in capsys.readouterr().out


def test_recompute_findings_is_an_analysts_action_over_every_advertiser(
    sessions: sessionmaker[Session],
) -> None:
    legacy = {"type": "Placeholder", "color": "N/A"}
    with sessions.begin() as session:
        world = World(session)
        for name in ("Metro", "Summit"):
            world.scrape(
                world.advertiser(name), [*photos(name, 4), {"name": f"{name}-old", **legacy}]
            )
    for reader in (actor(Role.MANAGER), None):
        with pytest.raises(PermissionDenied):
            recompute_findings(sessions, reader)
    with sessions() as session:
        assert list_findings(session, states=None) == []  # nothing was computed or stored

    report = recompute_findings(sessions, actor(Role.ANALYST, "ana"))
    assert len(report.opened) == 2 and report.resolved == []
    with sessions() as session:  # committed, for every advertiser
        stored = list_findings(session, detector=LEGACY_PLACEHOLDER)
    assert sorted(f.advertiser for f in stored) == ["Metro", "Summit"]
    assert sorted(f.id for f in stored) == sorted(report.opened)
    again = recompute_findings(sessions, actor(Role.ANALYST, "ana"))
    assert (again.opened, sorted(again.kept)) == ([], sorted(report.opened))


# --- BackgroundRefresh: findings refreshed in a thread after a fix --------------------------------


class Runs:
    """A stand-in for ``refresh_findings`` that records each run's advertiser and can hold the
    first run until released (to make requests arrive while it runs)."""

    def __init__(self, *, hold: bool = False, fail_first: bool = False) -> None:
        self.advertisers: list[int | None] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail_first = fail_first

    def __call__(self, session: Session, *, advertiser_id: int | None = None) -> None:
        self.advertisers.append(advertiser_id)
        self.started.set()
        assert self.release.wait(10)
        if self.fail_first and len(self.advertisers) == 1:
            raise RuntimeError("the database went away")


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Runs]:
    def install(**kwargs: bool) -> Runs:
        fake = Runs(**kwargs)
        monkeypatch.setattr(refresh_module, "refresh_findings", fake)
        return fake

    return install


def test_background_refresh_stores_the_findings_then_calls_on_done(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro")
        world.scrape(
            advertiser, [*photos("m", 3), {"name": "old", "type": "Placeholder", "color": "N/A"}]
        )
        advertiser_id = advertiser.id
    seen_by_on_done: list[list[str]] = []

    def on_done() -> None:  # runs after the refresh's transaction is committed
        with sessions() as session:
            seen_by_on_done.append([f.detector for f in list_findings(session)])

    refresher = BackgroundRefresh(sessions, on_done, delay_seconds=0)
    refresher.request([advertiser_id])
    assert refresher.wait(10)
    assert seen_by_on_done == [[LEGACY_PLACEHOLDER]]


def test_requests_during_a_refresh_are_coalesced_into_one_more_run(
    runs: Callable[..., Runs],
) -> None:
    fake = runs(hold=True)
    done: list[int] = []
    refresher = BackgroundRefresh(sessionmaker(), lambda: done.append(1), delay_seconds=0)
    refresher.request([7])
    assert fake.started.wait(10)
    for advertiser_id in (7, 8, 7):  # a burst of Updates while it runs
        refresher.request([advertiser_id])
    assert not refresher.wait(0.1)  # still running
    fake.release.set()
    assert refresher.wait(10)
    # Two runs, not four; the second covers everyone, since two advertisers asked.
    assert fake.advertisers == [7, None]
    assert done == [1, 1]


def test_one_advertiser_asking_again_gets_its_own_refresh_again(
    runs: Callable[..., Runs],
) -> None:
    fake = runs(hold=True)
    refresher = BackgroundRefresh(sessionmaker(), lambda: None, delay_seconds=0)
    refresher.request([3])
    assert fake.started.wait(10)
    refresher.request([3])
    refresher.request([3])
    fake.release.set()
    assert refresher.wait(10)
    assert fake.advertisers == [3, 3]
    # A request naming several advertisers, or none, refreshes everyone's findings.
    refresher.request([3, 4])
    assert refresher.wait(10)
    refresher.request([])
    assert refresher.wait(10)
    assert fake.advertisers == [3, 3, None, None]


def test_a_failing_refresh_is_logged_and_the_next_request_still_runs(
    runs: Callable[..., Runs], caplog: pytest.LogCaptureFixture
) -> None:
    fake = runs(fail_first=True)
    done: list[int] = []
    refresher = BackgroundRefresh(sessionmaker(), lambda: done.append(1), delay_seconds=0)
    with caplog.at_level(logging.ERROR, logger="tagging.detectors.refresh"):
        refresher.request([1])
        assert refresher.wait(10)
    (record,) = [r for r in caplog.records if r.name == "tagging.detectors.refresh"]
    assert "findings refresh after a fix failed" in record.getMessage()
    assert record.exc_info is not None and "went away" in str(record.exc_info[1])
    assert done == []  # no on_done after a failed run
    refresher.request([2])
    assert refresher.wait(10)
    assert fake.advertisers == [1, 2] and done == [1]


def test_a_failing_on_done_does_not_stop_the_refresher(
    runs: Callable[..., Runs], caplog: pytest.LogCaptureFixture
) -> None:
    fake = runs()
    calls: list[int] = []

    def on_done() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no cache to clear")

    refresher = BackgroundRefresh(sessionmaker(), on_done, delay_seconds=0)
    with caplog.at_level(logging.ERROR, logger="tagging.detectors.refresh"):
        refresher.request([1])
        assert refresher.wait(10)
    assert any("failed" in r.getMessage() for r in caplog.records)
    refresher.request([1])
    assert refresher.wait(10)
    assert fake.advertisers == [1, 1] and calls == [1, 1]


def test_wait_is_true_when_idle_and_false_while_a_refresh_runs(
    runs: Callable[..., Runs],
) -> None:
    refresher = BackgroundRefresh(sessionmaker(), lambda: None, delay_seconds=0)
    assert refresher.wait(0.5)  # nothing asked: idle at once
    fake = runs(hold=True)
    refresher.request([1])
    assert fake.started.wait(10)
    assert not refresher.wait(0.1)
    fake.release.set()
    assert refresher.wait(10)


def test_a_refresh_waits_its_delay_before_running(runs: Callable[..., Runs]) -> None:
    """The page's own answer comes first: the detectors run only after the delay."""
    fake = runs()
    refresher = BackgroundRefresh(sessionmaker(), lambda: None, delay_seconds=0.3)
    refresher.request([1])
    assert not fake.started.wait(0.1)
    assert fake.started.wait(10) and refresher.wait(10)
    assert fake.advertisers == [1]
