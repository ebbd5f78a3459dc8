"""Refreshing findings: states kept until the evidence changes, resolved findings, scoped
refreshes, and the ``weird`` CLI command that prints them."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.findings import ignore_finding, list_findings
from db.models import Advertiser, Finding, FindingState, Role
from db.vocab import LEGACY_PLACEHOLDER
from tagging.detectors.refresh import recompute_findings
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
