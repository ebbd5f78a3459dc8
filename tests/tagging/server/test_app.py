"""The ML server over real HTTP on loopback: auth, classify, cache, fixes, thumbnails, docs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from PIL import Image

from tagging.demo.generate import DemoInventory
from tests.utils.servers import ML_TOKEN, cdn_host, ml_settings

AUTH = {"Authorization": f"Bearer {ML_TOKEN}"}


def demo_urls(cdn: object, demo_dir: Path, kind: str = "ok", limit: int = 12) -> list[str]:
    inventory = DemoInventory.load(demo_dir)
    paths = [p for p, image in inventory.images.items() if image.kind == kind][:limit]
    return [cdn.url.rstrip("/") + p for p in paths]  # type: ignore[attr-defined]


def classify(server: object, urls: list[str], **options: object) -> dict:
    response = requests.post(
        f"{server.url}/classify",  # type: ignore[attr-defined]
        json={"urls": urls, **options},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_health_needs_no_token_and_names_the_models(ml_server: object, classifier: object) -> None:
    health = requests.get(f"{ml_server.url}/health", timeout=5).json()  # type: ignore[attr-defined]
    assert health["status"] == "ok"
    assert health["model_version"] == classifier.version  # type: ignore[attr-defined]
    assert health["cache_size"] == 0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}]
)
def test_every_other_endpoint_needs_the_token(ml_server: object, headers: dict) -> None:
    base = ml_server.url  # type: ignore[attr-defined]
    calls = [
        ("POST", "/classify", {"urls": ["http://x/a.jpg"]}),
        ("GET", "/images/" + "a" * 32, None),
        ("PUT", "/images/" + "a" * 32, {"image_type": "Stock"}),
        ("GET", "/images/" + "a" * 32 + "/thumbnail", None),
    ]
    for method, path, body in calls:
        response = requests.request(method, base + path, json=body, headers=headers, timeout=5)
        assert response.status_code == 401, (method, path)


def test_classify_then_cache_hit_then_fix(ml_server: object, cdn: object, demo_dir: Path) -> None:
    inventory = DemoInventory.load(demo_dir)
    urls = demo_urls(cdn, demo_dir)
    first = classify(ml_server, urls)
    results = first["results"]
    assert [r["url"] for r in results] == urls
    assert all(r["error"] is None and not r["cached"] for r in results)
    for result in results:
        assert result["image_type"] in ("Dealer", "Stock", "Placeholder")
        assert len(result["image_key"]) == 32 and len(result["sha256"]) == 64
        assert result["width"] > 0 and result["thumbnail_b64"]
        if result["image_type"] == "Placeholder":
            assert result["color"] is None  # the seed: a Placeholder has no color
        # The model's probability of every class; the confidence is that of its answer.
        probabilities = result["probabilities"]
        assert set(probabilities) == {"Dealer", "Stock", "Placeholder"}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=2e-4)
        assert probabilities[result["ml_image_type"]] == result["confidence"]
        assert result["confidence"] == max(probabilities.values())
    correct = sum(r["image_type"] == inventory.ground_truth(r["url"])[0] for r in results)
    assert correct >= len(results) * 0.75  # a quick test model, but clearly learnt

    second = classify(ml_server, urls)["results"]
    assert all(r["cached"] for r in second)
    assert [(r["image_key"], r["image_type"], r["color"]) for r in second] == [
        (r["image_key"], r["image_type"], r["color"]) for r in results
    ]
    assert [(r["confidence"], r["probabilities"]) for r in second] == [
        (r["confidence"], r["probabilities"]) for r in results
    ]

    key = results[0]["image_key"]
    fixed_type = "Stock" if results[0]["image_type"] != "Stock" else "Dealer"
    put = requests.put(
        f"{ml_server.url}/images/{key}",  # type: ignore[attr-defined]
        json={"image_type": fixed_type, "color": "Purple", "fix_id": "f1"},
        headers=AUTH,
        timeout=5,
    ).json()
    assert put["applied"] is True
    again = requests.put(
        f"{ml_server.url}/images/{key}",  # type: ignore[attr-defined]
        json={"image_type": fixed_type, "color": "Purple", "fix_id": "f1"},
        headers=AUTH,
        timeout=5,
    ).json()
    assert again["applied"] is False
    third = classify(ml_server, urls[:1])["results"][0]
    assert (third["image_type"], third["color"], third["type_source"]) == (
        fixed_type,
        "Purple",
        "fix",
    )
    # The model's answer is kept apart: a fix never overwrites the prediction.
    assert (third["ml_image_type"], third["ml_color"]) == (
        results[0]["image_type"],
        results[0]["color"],
    )
    assert (third["confidence"], third["probabilities"]) == (
        results[0]["confidence"],
        results[0]["probabilities"],
    )

    record = requests.get(f"{ml_server.url}/images/{key}", headers=AUTH, timeout=5).json()  # type: ignore[attr-defined]
    assert record["applied_fix_ids"] == ["f1"]
    assert record["ml_image_type"] == results[0]["image_type"]
    thumb = requests.get(f"{ml_server.url}/images/{key}/thumbnail", headers=AUTH, timeout=5)  # type: ignore[attr-defined]
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 240


def test_broken_images_are_per_item_errors(ml_server: object, cdn: object, demo_dir: Path) -> None:
    broken = demo_urls(cdn, demo_dir, kind="broken")
    good = demo_urls(cdn, demo_dir, limit=2)
    missing = cdn.url.rstrip("/") + "/cdn/nowhere/404.jpg"  # type: ignore[attr-defined]
    results = classify(ml_server, [*good, *broken, missing])["results"]
    assert [r["error"] for r in results[:2]] == [None, None]
    for result in results[2:]:
        assert result["image_type"] is None and result["error"], result
        assert result["confidence"] is None and result["probabilities"] is None
        assert result["error_code"] in ("bad_image", "bad_content_type", "fetch_failed")
    assert results[-1]["error_code"] == "fetch_failed" and "404" in results[-1]["error"]


def test_private_addresses_are_refused(ml_server: object) -> None:
    urls = ["http://127.0.0.1:9/x.jpg", "http://10.0.0.1/y.jpg", "http://169.254.169.254/latest"]
    results = classify(ml_server, urls)["results"]
    assert all(r["error_code"] == "blocked_url" for r in results), results


def test_color_false_skips_the_color_model(ml_server: object, cdn: object, demo_dir: Path) -> None:
    results = classify(ml_server, demo_urls(cdn, demo_dir, limit=6), color=False)["results"]
    assert all(r["color"] is None and r["color_source"] == "none" for r in results)
    # Asked again with color: decoded again for the color, everything else unchanged.
    with_color = classify(ml_server, demo_urls(cdn, demo_dir, limit=6))["results"]
    assert any(r["color"] for r in with_color)


@pytest.mark.parametrize(
    "body",
    [
        {"urls": []},
        {"urls": ["http://x/"] * 257},
        {"urls": "not a list"},
        {},
        {"urls": ["http://x/"], "known_keys": ["k"] * 1025},  # more than MAX_KNOWN_KEYS
        {"urls": ["http://x/"], "known_keys": ["k" * 65]},  # not an image_key
    ],
)
def test_bad_requests_get_422(ml_server: object, body: dict) -> None:
    response = requests.post(f"{ml_server.url}/classify", json=body, headers=AUTH, timeout=5)  # type: ignore[attr-defined]
    assert response.status_code == 422


def test_bad_fixes_get_422(ml_server: object) -> None:
    base = f"{ml_server.url}/images/{'a' * 32}"  # type: ignore[attr-defined]
    for body in ({"image_type": "Truck"}, {"color": "Mauve"}, {}):
        assert requests.put(base, json=body, headers=AUTH, timeout=5).status_code == 422
    bad_key = f"{ml_server.url}/images/..%2Fetc"  # type: ignore[attr-defined]
    assert requests.get(bad_key, headers=AUTH, timeout=5).status_code in (404, 422)


def test_openapi_docs(ml_server: object) -> None:
    spec = requests.get(f"{ml_server.url}/openapi.json", timeout=5).json()  # type: ignore[attr-defined]
    assert {"/classify", "/images/{image_key}", "/health"} <= set(spec["paths"])
    assert requests.get(f"{ml_server.url}/docs", timeout=5).status_code == 200  # type: ignore[attr-defined]


def test_with_a_profile_dir_the_server_writes_its_cpu_per_stage(
    tmp_path: Path,
    cdn: object,
    demo_dir: Path,
    classifier: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``TAGGING_ML_PROFILE_DIR`` (the benchmarks' switch): each call rewrites the process's
    totals; the answer is the same JSON as without it."""
    from tagging.server.app import create_app
    from tagging.server.stages import PROFILE_DIR_ENV, read_profiles
    from tagging.testing import UvicornThread

    monkeypatch.setenv(PROFILE_DIR_ENV, str(tmp_path / "profiles"))
    settings = ml_settings(tmp_path, f"sqlite:///{tmp_path / 'p.sqlite'}", cdn_host(cdn))
    app = create_app(settings, classifier=classifier)  # type: ignore[arg-type]
    with UvicornThread(app) as server:
        body = classify(server, demo_urls(cdn, demo_dir, limit=4))
    assert all(r["error"] is None and r["thumbnail_b64"] for r in body["results"])
    (profile,) = read_profiles(tmp_path / "profiles")
    stages = profile["stages"]
    assert isinstance(stages, dict) and profile["images"] == 4
    assert {"fetch (HTTP client)", "decode", "perceptual hash", "response JSON"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())


def test_color_vendor_down_keeps_types_and_leaves_color_none(
    tmp_path: Path, cdn: object, demo_dir: Path, classifier: object
) -> None:
    """The third-party color model failing must not fail the batch (the only fake: the vendor)."""
    from tagging.ingest.fetch import FetchPolicy, GuardedClient
    from tagging.ml.color import HttpColorModel
    from tagging.server.app import create_app
    from tagging.testing import UvicornThread

    settings = ml_settings(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite'}", cdn_host(cdn))
    vendor = HttpColorModel(
        "http://127.0.0.1:9/colors", GuardedClient(FetchPolicy(allowed_hosts=("127.0.0.1:9",)))
    )
    app = create_app(settings, classifier=classifier, color_model=vendor)  # type: ignore[arg-type]
    with UvicornThread(app) as server:
        results = classify(server, demo_urls(cdn, demo_dir, limit=6))["results"]
        assert all(r["error"] is None and r["image_type"] for r in results)
        assert all(r["color"] is None and r["color_source"] == "none" for r in results)


def test_an_override_is_the_advertisers_alone(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    """One advertiser's fix of a shared image changes its own answer, nobody else's."""
    url = demo_urls(cdn, demo_dir, limit=4)[3:]  # an image no other test fixes
    first = classify(ml_server, url)["results"][0]
    key, predicted = first["image_key"], first["image_type"]
    other = "Stock" if predicted != "Stock" else "Dealer"
    put = requests.put(
        f"{ml_server.url}/images/{key}",  # type: ignore[attr-defined]
        json={"image_type": other, "fix_id": "o1", "advertiser": "Lakeside Auto"},
        headers=AUTH,
        timeout=5,
    )
    record = put.json()["record"]  # as the advertiser that fixed it sees it
    assert (record["image_type"], record["ml_image_type"]) == (other, predicted)

    lakeside = classify(ml_server, url, advertiser="Lakeside Auto")["results"][0]
    metro = classify(ml_server, url, advertiser="Metro Car Center")["results"][0]
    nobody = classify(ml_server, url)["results"][0]
    assert (lakeside["image_type"], lakeside["type_source"]) == (other, "override")
    assert (metro["image_type"], metro["type_source"]) == (predicted, "model")
    assert nobody["image_type"] == predicted
    assert lakeside["ml_image_type"] == metro["ml_image_type"] == predicted

    seen_by = requests.get(
        f"{ml_server.url}/images/{key}",  # type: ignore[attr-defined]
        params={"advertiser": "Lakeside Auto"},
        headers=AUTH,
        timeout=5,
    ).json()
    assert (seen_by["image_type"], seen_by["type_source"]) == (other, "override")


def test_a_late_older_fix_loses_and_placeholder_clears_the_color(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    url = demo_urls(cdn, demo_dir, limit=5)[4:]  # an image no other test fixes
    key = classify(ml_server, url)["results"][0]["image_key"]

    def put(body: dict[str, object]) -> dict[str, object]:
        response = requests.put(
            f"{ml_server.url}/images/{key}",  # type: ignore[attr-defined]
            json=body,
            headers=AUTH,
            timeout=5,
        )
        assert response.status_code == 200, response.text
        return response.json()["record"]

    put({"image_type": "Dealer", "fix_id": "type", "fixed_at": "2026-12-01T08:00:00Z"})
    put({"color": "Red", "fix_id": "new", "fixed_at": "2026-12-01T10:00:00Z"})
    record = put({"color": "Blue", "fix_id": "old", "fixed_at": "2026-12-01T09:00:00Z"})
    assert record["color"] == "Red"  # the newer fix keeps the field
    record = put({"image_type": "Placeholder", "fix_id": "ph", "fixed_at": "2026-12-01T11:00:00Z"})
    assert (record["image_type"], record["color"]) == ("Placeholder", None)


def test_health_reports_the_cache_generation_and_a_new_store_gets_a_new_one(
    tmp_path: Path,
) -> None:
    from db.engine import make_engine
    from tagging.server.cache import MLCache

    url = f"sqlite:///{tmp_path / 'cache.sqlite'}"
    first = MLCache(make_engine(url, create=True))
    assert len(first.generation) == 32
    assert MLCache(make_engine(url)).generation == first.generation  # the same store
    (tmp_path / "cache.sqlite").unlink()
    assert MLCache(make_engine(url, create=True)).generation != first.generation  # lost
