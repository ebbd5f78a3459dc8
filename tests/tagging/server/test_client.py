"""MLClient with several ML server replicas, over real HTTP on loopback.

Every replica is the real ML server app (FastAPI on uvicorn, in a thread); a replica that is
"down" is a loopback port nothing listens on, or a server stopped mid-test. Shared-store tests run
on SQLite and PostgreSQL (``cache_url``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tagging.demo.generate import DemoInventory
from tagging.errors import MLServerAuthError, MLServerUnavailable
from tagging.ingest.fetch import client_from_settings
from tagging.server.client import MLClient
from tagging.server.schemas import ImageFix
from tagging.testing import UvicornThread
from tests.utils.servers import ML_TOKEN, cdn_host, closed_port, ml_settings

AUTH = {"Authorization": f"Bearer {ML_TOKEN}"}


def demo_urls(cdn: object, demo_dir: Path, limit: int = 8) -> list[str]:
    inventory = DemoInventory.load(demo_dir)
    paths = [p for p, image in inventory.images.items() if image.kind == "ok"][:limit]
    return [cdn.url.rstrip("/") + p for p in paths]  # type: ignore[attr-defined]


class Replicas:
    """Starts real ML server replicas on loopback, each on the cache store it is given."""

    def __init__(self, tmp_path: Path, cdn: object, classifier: object) -> None:
        self.tmp_path, self.cdn, self.classifier = tmp_path, cdn, classifier
        self.running: list[UvicornThread] = []

    def start(self, cache_url: str, port: int = 0) -> UvicornThread:
        from tagging.ml.color import EmbeddedColorModel
        from tagging.server.app import create_app

        settings = ml_settings(self.tmp_path, cache_url, cdn_host(self.cdn))
        app = create_app(settings, classifier=self.classifier, color_model=EmbeddedColorModel())  # type: ignore[arg-type]
        server = UvicornThread(app, port=port).start()
        self.running.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.running:
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture
def replicas(tmp_path: Path, cdn: object, classifier: object) -> Iterator[Replicas]:
    started = Replicas(tmp_path, cdn, classifier)
    yield started
    started.stop_all()


def client_of(cdn: object, tmp_path: Path, urls: list[str], **options: object) -> MLClient:
    """An MLClient of ``urls`` built as every process builds it: from the settings."""
    settings = ml_settings(
        tmp_path, "sqlite:///unused", cdn_host(cdn), ml_url=urls[0], ml_urls=tuple(urls)
    )
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    for name, value in options.items():
        setattr(ml, name, value)
    return ml


def calls(ml: MLClient) -> list[int]:
    return [replica.calls for replica in ml.replicas]


def a_fix(**values: object) -> ImageFix:
    return ImageFix.model_validate(
        {"fix_id": uuid.uuid4().hex, "fixed_at": datetime.now(UTC), **values}
    )


def record_at(server: UvicornThread, image_key: str) -> dict:
    response = requests.get(f"{server.url}/images/{image_key}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# --- one URL: as before ------------------------------------------------------------------------


def test_one_url_is_one_attempt_with_its_own_error(tmp_path: Path, cdn: object) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    settings = ml_settings(tmp_path, "sqlite:///unused", cdn_host(cdn), ml_url=url)
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    assert ml.base_url == url and ml.base_urls == [url]
    with pytest.raises(MLServerUnavailable, match=f"the ML server at {url} cannot be reached"):
        ml.classify(["http://127.0.0.1/a.jpg"])
    assert calls(ml) == [1]
    with pytest.raises(MLServerUnavailable):
        ml.health()
    with pytest.raises(MLServerUnavailable):
        ml.put_fix("a" * 32, a_fix(image_type="Stock"))


def test_one_url_behind_a_load_balancer_works_as_before(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path
) -> None:
    server = replicas.start(f"sqlite:///{tmp_path / 'cache.sqlite'}")
    ml = client_of(cdn, tmp_path, [server.url])
    urls = demo_urls(cdn, demo_dir, 4)
    response = ml.classify(urls)
    assert [r.url for r in response.results] == urls
    assert ml.health().cache_size == 4
    key = response.results[0].image_key
    assert key is not None
    assert ml.put_fix(key, a_fix(image_type="Stock")).applied
    record = ml.get_image(key)
    assert record is not None and record.image_type == "Stock"
    assert ml.get_image("f" * 32) is None
    # known_keys (the scrape's thumbnails already stored): no thumbnail comes back for them
    again = ml.classify(urls, known_keys=[key])
    assert again.results[0].thumbnail_b64 is None
    assert all(r.thumbnail_b64 for r in again.results[1:])


# --- spreading and failing over ----------------------------------------------------------------


def test_batches_take_turns_and_the_store_is_shared(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path, cache_url: str
) -> None:
    first, second = replicas.start(cache_url), replicas.start(cache_url)
    ml = client_of(cdn, tmp_path, [first.url, second.url])
    urls = demo_urls(cdn, demo_dir, 6)
    answers = [ml.classify(urls[i : i + 2]) for i in range(0, 6, 2)]
    answers += [ml.classify(urls[i : i + 2]) for i in range(0, 6, 2)]
    assert calls(ml) == [3, 3]
    # One store: what one replica classified, the other answers from the cache.
    assert not any(r.cached for a in answers[:3] for r in a.results)
    assert all(r.cached for a in answers[3:] for r in a.results)
    health = ml.health()
    assert health.cache_size == 6
    assert (
        health.cache_generation
        == requests.get(f"{first.url}/health", timeout=5).json()["cache_generation"]
    )


def test_fresh_clients_start_at_any_replica(tmp_path: Path, cdn: object) -> None:
    # Every task of a worker builds its own client; when each started at the first replica,
    # every one-batch scrape (a small chunk) went there and the second replica idled.
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    firsts = set()
    for _ in range(40):
        ml = client_of(cdn, tmp_path, urls)
        firsts.add(ml._order(ml.replicas)[0].url)
        ml.client.close()
    assert firsts == set(urls)


def test_the_least_busy_replica_gets_the_batch(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path
) -> None:
    cache = f"sqlite:///{tmp_path / 'cache.sqlite'}"
    first, second = replicas.start(cache), replicas.start(cache)
    ml = client_of(cdn, tmp_path, [first.url, second.url])
    ml.replicas[0].in_flight = 5  # another thread's long batches are running there
    for _ in range(3):
        ml.classify(demo_urls(cdn, demo_dir, 1))
    assert calls(ml) == [0, 3]


def test_a_replica_down_is_skipped_then_checked_before_it_gets_work_again(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path
) -> None:
    cache = f"sqlite:///{tmp_path / 'cache.sqlite'}"
    up = replicas.start(cache)
    port = closed_port()
    down_url = f"http://127.0.0.1:{port}"
    ml = client_of(cdn, tmp_path, [down_url, up.url], retry_after=0.5)
    urls = demo_urls(cdn, demo_dir, 8)
    for url in urls[:4]:
        assert ml.classify([url]).results[0].error is None  # never fails
    # Tried once (refused), then left alone while it rests.
    assert calls(ml) == [1, 4]
    assert not ml.replicas[0].up and "cannot be reached" in (ml.replicas[0].last_error or "")
    assert isinstance(ml.check_health()[down_url], MLServerUnavailable)

    back = replicas.start(cache, port=port)  # the replica comes back
    time.sleep(1.1)  # its rest (doubled by the health check above) is over
    for url in urls[4:]:
        ml.classify([url])
    assert ml.replicas[0].up and ml.replicas[0].calls >= 2
    assert back.url == down_url


def test_every_replica_down_is_ml_server_unavailable_naming_each(
    tmp_path: Path, cdn: object
) -> None:
    urls = [f"http://127.0.0.1:{closed_port()}" for _ in range(2)]
    ml = client_of(cdn, tmp_path, urls)
    with pytest.raises(MLServerUnavailable, match="no ML server replica") as caught:
        ml.classify(["http://127.0.0.1/a.jpg"])
    assert all(url in str(caught.value) for url in urls)
    assert calls(ml) == [1, 1]  # each tried once, even while resting
    with pytest.raises(MLServerUnavailable, match="no ML server replica answers"):
        ml.health()
    with pytest.raises(MLServerUnavailable):
        ml.put_fix("a" * 32, a_fix(image_type="Stock"))


def test_a_refused_token_is_not_retried_elsewhere(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path
) -> None:
    cache = f"sqlite:///{tmp_path / 'cache.sqlite'}"
    first, second = replicas.start(cache), replicas.start(cache)
    ml = client_of(cdn, tmp_path, [first.url, second.url], token="wrong")
    with pytest.raises(MLServerAuthError):
        ml.classify(demo_urls(cdn, demo_dir, 1))
    assert sum(calls(ml)) == 1


def test_from_settings_allows_every_replica_and_keeps_the_api(tmp_path: Path, cdn: object) -> None:
    urls = ["http://127.0.0.1:18001", "http://localhost:18002/"]
    settings = ml_settings(
        tmp_path, "sqlite:///unused", cdn_host(cdn), ml_url=urls[0], ml_urls=tuple(urls)
    )
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    assert ml.base_urls == ["http://127.0.0.1:18001", "http://localhost:18002"]
    assert ml.base_url == urls[0] and ml.token == ML_TOKEN and ml.timeout == 120.0
    allowed = ml.client.policy.allowed_hosts
    assert {"127.0.0.1:18001", "localhost:18002"} <= set(allowed)
    # the client of advertisers' URLs allows none of them
    assert not {"127.0.0.1:18001", "localhost:18002"} & set(
        client_from_settings(settings).policy.allowed_hosts  # type: ignore[arg-type]
    )


# --- fix pushes: one replica per cache store ---------------------------------------------------


def test_a_fix_goes_to_one_replica_of_a_shared_store(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path, cache_url: str
) -> None:
    first, second = replicas.start(cache_url), replicas.start(cache_url)
    ml = client_of(cdn, tmp_path, [first.url, second.url])
    key = ml.classify(demo_urls(cdn, demo_dir, 1)).results[0].image_key
    assert key is not None
    before = calls(ml)
    result = ml.put_fix(key, a_fix(image_type="Stock"))
    assert result.applied
    assert sum(calls(ml)) - sum(before) == 1  # one PUT
    assert record_at(first, key)["image_type"] == record_at(second, key)["image_type"] == "Stock"

    # One replica down: the other takes the fix for both.
    second.stop()
    fix = a_fix(color="Red")
    assert ml.put_fix(key, fix).applied
    assert record_at(first, key)["color"] == "Red"
    assert not ml.put_fix(key, fix).applied  # the same fix again changes nothing


def test_a_fix_goes_to_every_separate_store_and_waits_for_a_store_that_is_down(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path
) -> None:
    first = replicas.start(f"sqlite:///{tmp_path / 'first.sqlite'}")
    second_store = f"sqlite:///{tmp_path / 'second.sqlite'}"
    second = replicas.start(second_store)
    ml = client_of(cdn, tmp_path, [first.url, second.url])
    generations = {first.url: "", second.url: ""}
    for server in (first, second):
        generations[server.url] = requests.get(f"{server.url}/health", timeout=5).json()[
            "cache_generation"
        ]
    assert len(set(generations.values())) == 2
    # The worker's generation covers both stores.
    assert ml.health().cache_generation == "+".join(sorted(generations.values()))

    key = "c" * 32  # a fix may come before the image is classified
    assert ml.put_fix(key, a_fix(image_type="Dealer")).applied
    assert record_at(first, key)["image_type"] == record_at(second, key)["image_type"] == "Dealer"

    # A store that is down fails the push (the fix stays pending) …
    port = second.port
    second.stop()
    fix = a_fix(image_type="Stock")
    with pytest.raises(MLServerUnavailable, match="reached 1 of 2 ML cache stores"):
        ml.put_fix(key, fix)
    assert record_at(first, key)["image_type"] == "Stock"
    # … and the next push, once it is back, lands there and is not applied twice here.
    back = replicas.start(second_store, port=port)
    ml.replicas[1].down_until = 0.0  # no need to wait for its rest in a test
    result = ml.put_fix(key, fix)
    assert result.applied
    assert record_at(back, key)["image_type"] == "Stock"
    assert record_at(first, key)["applied_fix_ids"].count(fix.fix_id) == 1


def test_the_push_of_pending_fixes_survives_a_replica_down(
    replicas: Replicas, tmp_path: Path, cdn: object, demo_dir: Path, cache_url: str
) -> None:
    """What the worker calls (health, then put_fix) through a client of two replicas."""
    first = replicas.start(cache_url)
    ml = client_of(cdn, tmp_path, [f"http://127.0.0.1:{closed_port()}", first.url])
    generation = requests.get(f"{first.url}/health", timeout=5).json()["cache_generation"]
    assert ml.health().cache_generation == generation  # the replica down hides nothing
    assert ml.put_fix("d" * 32, a_fix(image_type="Placeholder")).applied
    assert record_at(first, "d" * 32)["image_type"] == "Placeholder"
