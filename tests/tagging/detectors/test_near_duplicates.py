"""Case 6, ``near_duplicates``: near-identical images of two dealers labelled differently."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.models import Severity
from db.vocab import NEAR_DUPLICATES
from tests.utils.world import near_pair, of, picture, refresh, thumbnail_of


def test_near_duplicates_of_two_dealers_labelled_differently(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        near_pair(session)
    (finding,) = of(refresh(sessions), NEAR_DUPLICATES)
    assert finding.severity == Severity.INFO and finding.evidence["distance"] == 1
    labels = sorted((i["advertiser"], i["label"]) for i in finding.evidence["images"])
    assert labels == [("Summit Auto Group", "Stock · Red"), ("Sunrise Motors", "Dealer · Red")]
    assert "conflicting examples" in finding.explanation


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"fixed": False}, id="no fix: the model agrees with itself"),
        pytest.param({"thumb": thumbnail_of(picture(8))}, id="hash alike, picture not"),
    ],
)
def test_look_alikes_that_are_not_conflicting_examples(
    sessions: sessionmaker[Session], kwargs: dict[str, Any]
) -> None:
    with sessions.begin() as session:
        near_pair(session, **kwargs)
    assert of(refresh(sessions), NEAR_DUPLICATES) == []
