"""``python -m tagging cdn --latency-ms``: the demo CDN as a process far away (benchmarks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tagging.cli.up import ROOT
from tagging.demo.generate import DemoInventory


def cdn_env(tmp_path: Path, demo_dir: Path) -> dict[str, str]:
    """A data dir whose demo/ is the suite's small demo (what ``cdn`` serves)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if not (data / "demo").exists():
        (data / "demo").symlink_to(demo_dir, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env.update(TAGGING_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def slow_cdn(tmp_path: Path, demo_dir: Path) -> Iterator[tuple[str, str]]:
    """``cdn --port 0 --latency-ms 200`` as a process: ``(base URL, its start-up line)``.

    Port 0 lets the kernel pick a free port, which the start-up line names: no race with
    another test for a port found free a moment earlier.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "tagging", "cdn", "--port", "0", "--latency-ms", "200"],
        env=cdn_env(tmp_path, demo_dir),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the socket is bound
        found = re.search(r"at (http://127\.0\.0\.1:\d+) ", line)
        assert found, line + (process.stdout.read() if process.poll() is not None else "")
        yield found.group(1), line
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_every_response_waits_the_latency(slow_cdn: tuple[str, str], demo_dir: Path) -> None:
    url, line = slow_cdn
    assert "200 ms added to every response" in line
    inventory = DemoInventory.load(demo_dir)
    image = next(p for p, img in sorted(inventory.images.items()) if img.kind == "ok")
    with requests.Session() as session:  # one kept-alive connection: no connect time measured
        session.get(f"{url}/robots.txt", timeout=10)
        for path, method in ((image, "GET"), (image, "HEAD"), ("/sitemap_index.xml", "GET")):
            started = time.perf_counter()
            response = session.request(method, url + path, timeout=10)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, (method, path)
            assert elapsed >= 0.2, (method, path, elapsed)
        # A 304 waits too: a revalidation costs the round trip whatever the answer.
        etag = session.get(url + image, timeout=10).headers["ETag"]
        started = time.perf_counter()
        again = session.get(url + image, headers={"If-None-Match": etag}, timeout=10)
        assert again.status_code == 304 and time.perf_counter() - started >= 0.2


@pytest.mark.parametrize("latency", ["-5", "inf", "nan"])
def test_a_latency_not_0_or_more_is_one_line_and_no_server(
    tmp_path: Path, demo_dir: Path, latency: str
) -> None:
    # Every failure of `python -m tagging` is one line on stderr and exit code 1 (README,
    # "Command line"; `serve --workers 0` alike); argparse's own errors (exit 2) are for values
    # that are not numbers at all. inf slept forever (every request failed), nan not at all.
    result = subprocess.run(
        [sys.executable, "-m", "tagging", "cdn", "--port", "0", "--latency-ms", latency],
        env=cdn_env(tmp_path, demo_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --latency-ms must be a finite number, 0 or more; got {float(latency):g}"
    ]
    assert "Traceback" not in result.stderr and result.stdout == ""  # it never started serving

    not_a_number = subprocess.run(
        [sys.executable, "-m", "tagging", "cdn", "--latency-ms", "soon"],
        env=cdn_env(tmp_path, demo_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not_a_number.returncode == 2
    assert "argument --latency-ms: invalid float value: 'soon'" in not_a_number.stderr
    assert "Traceback" not in not_a_number.stderr
