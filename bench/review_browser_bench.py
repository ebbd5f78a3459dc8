"""The review page in a real browser: what an analyst waits for, measured in Chromium.

``review_bench.py`` times the page's script in-process (AppTest); this one times what the
analyst sees, in Debian's Chromium (Playwright, 1440x900), against the whole stack started here:
demo CDN, ML server, an app database filled by real scrapes, and ``streamlit run serve.py``.
Two sitemaps: the demo's (the advertiser the page opens on in the demo: the first by name) and
a 5,000-item one (a synthetic sitemap served by a small server in this process, its images the
demo CDN's, each URL made distinct with ``?n=``, scraped once through the real ML server, ~20 s,
as ``scrape_bench.py`` does). The demo advertiser alone is scraped, as the browser tests do
(no staged findings).

Every figure is taken in the page, in its own clock (``performance.now()`` and
``event.timeStamp``), by a script installed before the page's own (``HARNESS``): from the input
event (or the navigation start) to the first animation frame after which the expected state held,
unchanged, for ``QUIET_MS`` with no script running. The grid is settled when its tiles show the
expected items and every picture in the viewport is loaded (``img.complete && naturalWidth > 0``,
or the "no image" fallback). Playwright only sends the input and collects the result: its own
polling (100+ ms) is in none of the figures. Median and p90 of ``--repeat`` repetitions:

* **first render**: navigation start -> grid settled. *Cold*: a new browser context (empty HTTP
  cache: Streamlit's bundle, the component, the thumbnails) and empty query caches on the server
  (Streamlit's own "Clear caches" message, then the home page once, so that the engine and
  clients are back as on a running server; the review page is loaded once before, unmeasured,
  so that no figure pays the page's first imports). *Warm*: the same URL again in a used
  context (its HTTP cache) with the server's caches warm.
* **page change**: the Page box, the next page typed + Enter -> the next page's tiles settled.
* **filter change**: an Image Type picked in the multiselect -> tiles of the picked types
  settled; every pick makes a filter combination not shown before (no query-cache hit).
* **Update**: 5 changes made with the keys, then ``u`` -> the toast shows; and -> the grid
  acknowledges (its bar offers "Undo last update", nothing unsaved). The same 5 tiles each time,
  each flipped to another type; before each Update the app process is let go idle (an Update
  refreshes the findings in a thread of the app 1 s later, which would slow the next one).
* **keyboard fix**: a tile focused, ArrowRight + a type key (``2``, or ``1`` on a Stock tile)
  -> the next tile's ``select.type`` shows the new value (the next animation frame); Event
  Timing adds the key's handler time and its next paint. Again with 96 tiles a page at the end
  (the grid draws every tile again on each key).

The server side of the same runs comes from Streamlit's WebSocket, timestamped in the page: the
rerun request sent -> the ``script_finished`` message received (the script run, its callbacks
and the loopback; AppTest's figure, without session start, WebSocket or concurrent thumbnail
requests, is ``review_bench.py``'s). "Where the time goes" splits each action, from the same
messages, resource timing and long tasks: the browser before the request (page load for a
navigation: HTML, Streamlit's bundle, the WebSocket), the server until the grid's message (its
longest silence names the element the script was slow to reach), the browser from that message
to the tiles drawn (Streamlit's frontend: its lazily loaded JS chunks, long tasks), and from the
tiles to the visible thumbnails loaded (the ``/api/thumb`` requests). An Update splits into the
request, the run's start, the grid's callback (save + push to the ML server), the script until
the toast (or the grid), and the browser showing it. Missed targets are listed with their
largest part.

    .venv/bin/python bench/review_browser_bench.py [--repeat 5] [--items 5000] [--skip-large]

About 3.5 minutes on the 2-core machine (one minute of it the set-up); the exit code is 0 when
targets are missed (they are listed), 1 when Chromium is missing or a measurement never settles
(with a screenshot in the temp dir).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import common
from scrape_bench import SitemapServer, large_sitemap

from db.vocab import IMAGE_TYPES as TYPES  # keys 1, 2, 3 of the grid
from tagging.cli.console import progress_bar
from tagging.config import Settings

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # (main() says what is missing)
    PlaywrightTimeout = TimeoutError  # type: ignore[misc,assignment]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
LARGE_ADVERTISER = "Bench Large Sitemap"
ANALYST = ("analyst", "analyst-demo-pass")
QUIET_MS = 400
"""The state must hold this long, unchanged and with no script running, to count as settled."""
TIMEOUT_MS = 60_000
UPDATE_CHANGES = 5
PAGE_SIZES = (24, 48, 96)  # views/review.py: PAGE_SIZES (the page imports Streamlit's runtime)
ACK_TIMEOUT_MS = 20_000
"""An Update the grid has not acknowledged by then is reported (and its changes discarded)."""
NONCE = re.compile(r'"nonce"\s*:\s*"([^"]+)"')
TARGETS_MS = {
    "first render, cold": 1500,
    "first render, warm": 1500,
    "page change": 500,
    "filter change": 500,
    "Update -> toast": 1000,
    "Update -> grid acknowledges": 1000,
    "keyboard fix": 150,
    f"keyboard fix, {max(PAGE_SIZES)} tiles a page": 150,
}

# The measuring script, installed in every document before the page's own scripts.
HARNESS = r"""
(() => {
  if (window.__td) return;
  const td = { frames: [], inputs: [], states: [], events: [], sockets: [], watch: null };
  window.__td = td;
  const now = () => performance.now();

  // Streamlit's WebSocket: every message in and out, timestamped as it arrives / is sent.
  const Native = window.WebSocket;
  class Traced extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      if (String(url).includes("_stcore/stream")) {
        td.sockets.push(this);
        this.addEventListener("message", (e) => {
          td.frames.push({ dir: "in", t: now(), data: e.data });
        });
      }
    }
    send(data) {
      if (td.sockets.includes(this)) td.frames.push({ dir: "out", t: now(), data });
      return super.send(data);
    }
  }
  window.WebSocket = Traced;

  // Input events, at the time the browser created them (event.timeStamp: the same clock).
  for (const type of ["keydown", "click"]) {
    const note = (e) => td.inputs.push({ type, key: e.key ?? null, t: e.timeStamp });
    window.addEventListener(type, note, true);
  }
  // Event Timing: input -> handlers -> next paint, for events of 16 ms or more.
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        td.events.push({
          name: e.name, t: e.startTime, start: e.processingStart, end: e.processingEnd,
          duration: e.duration,
        });
      }
    }).observe({ type: "event", durationThreshold: 16, buffered: true });
  } catch {}
  // Long tasks (50 ms or more on the main thread: script, style, layout).
  td.longtasks = [];
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        td.longtasks.push({ t: e.startTime, duration: e.duration });
      }
    }).observe({ type: "longtask", buffered: true });
  } catch {}
  performance.setResourceTimingBufferSize(100000);  // every thumbnail of every page change

  const app = () => document.querySelector('[data-testid="stApp"]');
  const root = () =>
    document.querySelector('[data-testid="stBidiComponentIsolated"]')?.shadowRoot ?? null;
  let observedRoot = null;
  let observedApp = null;
  let lastMutation = 0;
  const inView = (node) => {
    const box = node.getBoundingClientRect();
    return box.bottom > 0 && box.top < innerHeight && box.width > 0;
  };
  // A change of the grid restarts the wait, except a picture out of the viewport (its retries).
  const gridObserver = new MutationObserver((records) => {
    for (const m of records) {
      if (m.type === "attributes" && m.target.tagName === "IMG" && !inView(m.target)) continue;
      lastMutation = now();
    }
  });
  const noteState = (s) => {
    if (s && (!td.states.length || td.states.at(-1).state !== s)) {
      td.states.push({ t: now(), state: s });
    }
  };
  // A short run can start and end before the callback: its old values say it ran.
  const stateObserver = new MutationObserver((records) => {
    for (const m of records) noteState(m.oldValue);
    noteState(app()?.dataset.testScriptState);
  });
  function observe() {
    const r = root();
    if (r && r !== observedRoot) {
      observedRoot = r;
      lastMutation = now();
      gridObserver.observe(r, {
        subtree: true, childList: true, attributes: true, characterData: true,
      });
    }
    const a = app();
    if (a && a !== observedApp) {
      observedApp = a;
      stateObserver.observe(a, {
        attributes: true, attributeOldValue: true, attributeFilter: ["data-test-script-state"],
      });
      noteState(a.dataset.testScriptState);
    }
  }

  // The grid settled: its tiles, and every picture in the viewport loaded (or its fallback).
  function gridReady(spec) {
    const r = root();
    if (!r) return null;
    const tiles = [...r.querySelectorAll(".tile")];
    if (!tiles.length) return null;
    const ids = tiles.map((t) => Number(t.dataset.id));
    if (spec.notIds && ids.some((id) => spec.notIds.includes(id))) return null;
    const type = (t) => t.querySelector("select.type")?.value;
    if (spec.types && tiles.some((t) => !spec.types.includes(type(t)))) return null;
    // The expected tiles are drawn; loaded: with every picture in the viewport.
    let visible = 0, fallback = 0, retried = 0, loaded = true;
    const srcs = [];
    const imgs = [...r.querySelectorAll(".tile img")];
    for (const img of imgs) {
      if (!inView(img)) continue;
      visible += 1;
      if (!img.complete) loaded = false;
      else if (img.src.startsWith("data:")) fallback += 1;
      else if (img.naturalWidth === 0) loaded = false;
      if (img.dataset.tries) retried += 1;
      srcs.push(img.currentSrc || img.src);
    }
    if (!visible) return null;
    const retriedAll = imgs.filter((img) => img.dataset.tries).length;
    return { tiles: tiles.length, visible, fallback, retried, retriedAll, ids, srcs, loaded };
  }

  function newToast(spec, marked) {
    for (const toast of document.querySelectorAll('[data-testid="stToast"]')) {
      const text = toast.textContent;
      if (!marked.has(toast) && text.includes(spec.toast)) return text.trim();
    }
    return null;
  }

  function barAcknowledged(spec) {
    const bar = root()?.querySelector(".bar");
    if (!bar) return false;
    const undo = [...bar.querySelectorAll("button")].find((b) =>
      b.textContent.startsWith("Undo last update"),
    );
    const unsaved = bar.querySelector(".count");
    return spec.undo ? Boolean(undo && !undo.disabled && !unsaved) : !undo && !unsaved;
  }

  function matches(input, want) {
    return input.type === want.type && (want.key === undefined || input.key === want.key);
  }

  // One measurement: from the first input named in spec.input after arm() (or from the
  // navigation start) until the expected state has held, unchanged, for spec.quiet ms.
  td.arm = (spec) => {
    const w = {
      spec,
      armed: now(),
      inputFrom: td.inputs.length,
      t0: spec.input ? null : 0,
      marked: new Set(document.querySelectorAll('[data-testid="stToast"]')),
      okSince: null,
      marks: {},
      result: null,
    };
    w.done = new Promise((resolve) => { w.resolve = resolve; });
    td.watch = w;
    requestAnimationFrame(tick);
    return true;
  };

  function tick() {
    const w = td.watch;
    if (!w || w.result) return;
    observe();
    const t = now();
    const spec = w.spec;
    if (spec.input) {
      let from = w.inputFrom;
      spec.input.forEach((want, n) => {
        const at = td.inputs.slice(from).findIndex((i) => matches(i, want));
        const mark = `input${n}`;
        if (at >= 0 && w.marks[mark] === undefined) w.marks[mark] = td.inputs[from + at].t;
        if (at >= 0) from += at + 1;
      });
      if (w.marks.input0 !== undefined) w.t0 = w.marks.input0;
    }
    let ok = false;
    let info = null;
    if (spec.kind === "grid") {
      info = gridReady(spec);
      // A server action must have changed the grid after the input: not the old grid, settled.
      const fresh = !spec.run || (w.t0 !== null && lastMutation > w.t0);
      if (info !== null && fresh && w.marks.drawn === undefined) w.marks.drawn = t;
      ok = info !== null && info.loaded && fresh;
    } else if (spec.kind === "update") {
      const text = w.t0 === null ? null : newToast(spec, w.marked);
      if (text && w.marks.toast === undefined) { w.marks.toast = t; w.marks.toastText = text; }
      if (w.t0 !== null && w.marks.ack === undefined && barAcknowledged(spec)) w.marks.ack = t;
      ok = w.marks.toast !== undefined && w.marks.ack !== undefined;
    } else if (spec.kind === "key") {
      const r = root();
      const tile = r?.querySelector(`.tile[data-id="${spec.id}"]`);
      const m = w.marks;
      if (m.input0 !== undefined && m.focus === undefined && tile && r.activeElement === tile) {
        m.focus = t;
      }
      const value = tile?.querySelector("select.type")?.value;
      if (m.input1 !== undefined && m.value === undefined && value === spec.value) m.value = t;
      ok = w.marks.focus !== undefined && w.marks.value !== undefined;
    }
    if (!ok || (spec.kind === "grid" && w.okSince !== null && lastMutation > w.okSince)) {
      w.okSince = ok ? t : null;
    } else if (w.okSince === null) {
      w.okSince = t;
    }
    const running = app()?.dataset.testScriptState === "running";
    const ran =
      !spec.run || td.states.some((s) => w.t0 !== null && s.t >= w.t0 && s.state === "running");
    if (ok && w.t0 !== null && !running && ran && t - w.okSince >= spec.quiet) {
      w.result = { t0: w.t0, at: w.okSince, end: t, info, marks: w.marks };
      w.resolve(w.result);
      return;
    }
    if (t - w.armed > spec.timeout) {
      w.result = { timeout: true, t0: w.t0, end: t, info, marks: w.marks, running, ran, ok };
      w.resolve(w.result);
      return;
    }
    requestAnimationFrame(tick);
  }

  // A review page measures its own first render: navigation start -> grid settled.
  if (location.pathname.endsWith("/review")) {
    td.arm({ kind: "grid", input: null, quiet: __QUIET__, timeout: __TIMEOUT__, run: false });
  }

  td.frameData = (from, to) => {
    const out = [];
    for (const f of td.frames) {
      if (f.t < from || f.t > to || typeof f.data === "string") continue;
      const d = f.data;
      const bytes = d instanceof ArrayBuffer
        ? new Uint8Array(d)
        : new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
      let s = "";
      for (let i = 0; i < bytes.length; i += 0x8000) {
        s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      }
      out.push({ dir: f.dir, t: f.t, b64: btoa(s) });
    }
    return out;
  };
  // Resource timing: the visible thumbnails' requests, and the scripts the page loaded.
  td.resources = (from, srcs) => {
    const thumbs = srcs.map((src) => {
      const entry = performance.getEntriesByName(src).filter((e) => e.startTime >= from).at(-1);
      if (!entry) return null;
      return { start: entry.startTime, end: entry.responseEnd, bytes: entry.transferSize };
    });
    const scripts = performance.getEntriesByType("resource")
      .filter((e) => e.initiatorType === "script" || /[.]js([?]|$)/.test(e.name))
      .filter((e) => e.startTime >= from)
      .map((e) => ({ start: e.startTime, end: e.responseEnd, bytes: e.transferSize }));
    const nav = performance.getEntriesByType("navigation")[0];
    return {
      thumbs,
      scripts,
      nav: nav ? { html: nav.responseEnd, dcl: nav.domContentLoadedEventEnd } : null,
      longtasks: td.longtasks.filter((e) => e.t + e.duration >= from),
    };
  };
  td.tiles = () => [...(root()?.querySelectorAll(".tile") ?? [])].map((t) => ({
    id: Number(t.dataset.id),
    type: t.querySelector("select.type")?.value ?? null,
    fixable: !t.classList.contains("locked"),
  }));
})();
""".replace("__QUIET__", str(QUIET_MS)).replace("__TIMEOUT__", str(TIMEOUT_MS))


STARTED = time.monotonic()


def step(message: str) -> None:
    """One progress line per step (stderr: stdout is the report)."""
    print(f"-- {time.monotonic() - STARTED:4.0f} s  {message}", file=sys.stderr, flush=True)


def wait_idle(pid: int, timeout: float = 15.0) -> None:
    """Wait (up to ``timeout``) until process ``pid`` uses less than 10% of a core."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = common.process_cpu_seconds(pid)
        time.sleep(0.25)
        if common.process_cpu_seconds(pid) - before < 0.025:
            return


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    """The app's settings (its database, the ML server, the allowed hosts)."""
    app_url: str
    app_pid: int
    demo_advertiser: str
    demo_items: int
    large_source: str
    """How the large sitemap's rows came to be (a real scrape, and how long it took)."""


def start_stack(stack: common.Services, data: common.BenchData, tmp: Path, items: int) -> Stack:
    """Demo CDN, ML server, a scraped app database (demo + a large sitemap), ``streamlit run``."""
    from db.accounts import ensure_demo_accounts
    from db.advertisers import add_advertiser
    from db.engine import make_engine, make_session_factory
    from tagging.cli.up import app_command
    from tagging.demo.setup import register_demo_advertisers
    from tagging.ingest.fetch import client_from_settings
    from tagging.ingest.scrape import run_scrape
    from tagging.server.client import MLClient

    step("starting the demo CDN and the ML server")
    cdn = common.start_cdn(stack, data)
    token = common.new_token()
    ml = common.start_ml_server(stack, data, cdn, token, tmp / "ml-cache.sqlite")
    sitemaps = stack.enter_context(
        SitemapServer({"/large.xml": large_sitemap(cdn, data, items, "n")})
    )
    db_path = tmp / "app.sqlite"
    common.fresh_app_db(db_path)
    settings = Settings(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{db_path}",
        ml_url=ml.url,
        ml_token=token,
        ml_cache_url=f"sqlite:///{tmp / 'unused-ml-cache.sqlite'}",
        allowed_hosts=(cdn.host_entry, sitemaps.host_entry),
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    register_demo_advertisers(settings, data.inventory, cdn.url)
    engine = make_engine(settings.database_url)
    stack.callback(engine.dispose)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        ensure_demo_accounts(session)
        if items:
            add_advertiser(session, LARGE_ADVERTISER, sitemaps.url("/large.xml"))

    client = client_from_settings(settings)
    stack.callback(client.close)
    ml_client = MLClient.from_settings(settings)
    stack.callback(ml_client.client.close)
    # The advertiser the page opens on in the demo, scraped as the browser tests do.
    demo = sorted(a.name for a in data.inventory.advertisers)[0]
    step(f"scraping the demo's {demo} through the ML server")
    with progress_bar(f"scrape {demo}") as progress:
        summary = run_scrape(sessions, demo, ml=ml_client, client=client, progress=progress)
    demo_items = summary.items
    source = ""
    if items:
        step(f"scraping the {items:,}-item sitemap through the ML server")
        started = time.perf_counter()
        with progress_bar(f"scrape {LARGE_ADVERTISER}") as progress:
            summary = run_scrape(
                sessions, LARGE_ADVERTISER, ml=ml_client, client=client, progress=progress
            )
        seconds = time.perf_counter() - started
        if summary.items != items:
            raise SystemExit(f"the large scrape stored {summary.items:,} items, not {items:,}")
        source = (
            f"real scrape through the ML server ({seconds:.0f} s): a synthetic sitemap served "
            "in this process, its images the demo CDN's made distinct with ?n="
        )

    step("starting the app (streamlit run serve.py)")
    port = common.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env.update(settings.to_env())
    log_path = data.path("logs", f"streamlit-{port}.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            app_command(common.HOST, port),
            env=env,
            cwd=common.ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the benchmark, which stops it
        )
    stack.callback(_stop, process)
    url = f"http://{common.HOST}:{port}"
    _wait_http(f"{url}/_stcore/health", 60, process, log_path)
    return Stack(settings, url, process.pid, demo, demo_items, source)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,  # noqa: S310 - loopback
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"streamlit did not start:\n{tail}")


# --- the WebSocket frames ----------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    incoming: bool
    t: float
    kind: str
    """ForwardMsg/BackMsg field: ``delta``, ``script_finished``, ``rerun_script``, …"""
    elements: tuple[str, ...] = ()
    """A delta's element types (``bidi_component``, ``toast``, …)."""
    label: str = ""
    """What the message draws, in words (``button 'Relaunch scrape'``), for the server's gaps."""
    size: int = 0
    grid_bytes: tuple[int, int, int] = (0, 0, 0)
    """The grid's message: its JS + CSS, its data (JSON), in bytes."""
    nonces: tuple[str, ...] = ()
    """The grid's action nonces: sent in a rerun request, or acknowledged in the grid's data."""


def _label(element: Any) -> str:
    kind = str(element.WhichOneof("type"))
    if kind == "bidi_component":
        return "the review grid"
    body = getattr(element, kind)
    text = str(
        getattr(body, "label", "") or getattr(body, "body", "") or getattr(body, "text", "") or ""
    )
    text = " ".join(text.split())
    return f"{kind} '{text[:40]}'" if text else kind


def read_frames(page: Any, start: float, end: float) -> list[Frame]:
    """The WebSocket messages the page sent and received between ``start`` and ``end``."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    frames = []
    for raw in page.evaluate("([a, b]) => window.__td.frameData(a, b)", [start, end]):
        body = base64.b64decode(raw["b64"])
        if raw["dir"] == "out":
            back = BackMsg.FromString(body)
            sent = [
                w.json_trigger_value or w.json_value
                for w in back.rerun_script.widget_states.widgets
            ]
            nonces = tuple(n for text in sent for n in NONCE.findall(text))
            kind = str(back.WhichOneof("type"))
            frames.append(Frame(False, raw["t"], kind, size=len(body), nonces=nonces))
            continue
        msg = ForwardMsg.FromString(body)
        kind = str(msg.WhichOneof("type"))
        elements: tuple[str, ...] = ()
        label = {
            "page_config_changed": "the script's first message (the callbacks ran before it)",
            "script_finished": "the end of the script",
        }.get(kind, kind)
        grid = (0, 0, 0)
        nonces: tuple[str, ...] = ()
        if kind == "delta":
            delta = msg.delta
            which = delta.WhichOneof("type")
            if which == "new_element":
                element = delta.new_element
                elements = (str(element.WhichOneof("type")),)
                label = _label(element)
                if elements[0] == "bidi_component":
                    component = element.bidi_component
                    grid = (
                        len(component.js_content.encode()),
                        len(component.css_content.encode()),
                        len(component.json.encode()),
                    )
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        nonces = (str(json.loads(component.json)["ack"]["nonce"]),)
            elif which == "new_transient":
                transient = delta.new_transient.elements
                elements = tuple(str(e.WhichOneof("type")) for e in transient)
                # An empty one ends a cached loader's spinner: the silence before it was a
                # cache miss (the spinner itself shows only after half a second).
                label = ", ".join(_label(e) for e in transient) or "the end of a cache miss"
            else:
                label = str(which)
        frames.append(Frame(True, raw["t"], kind, elements, label, len(body), grid, nonces))
    return frames


def server_side(
    frames: Sequence[Frame], t0: float, end: float
) -> tuple[Frame | None, Frame | None, int]:
    """The first rerun request after ``t0`` and the last script_finished before ``end``."""
    sent = next(
        (f for f in frames if not f.incoming and f.kind == "rerun_script" and f.t >= t0), None
    )
    if sent is None:
        return None, None, 0
    finished = [
        f for f in frames if f.incoming and f.kind == "script_finished" and sent.t <= f.t <= end
    ]
    return sent, (finished[-1] if finished else None), len(finished)


def largest_gap(frames: Sequence[Frame], sent: Frame, until: float) -> tuple[float, str]:
    """The longest silence of the server between the request and ``until``, and what came after
    it: where the script spent its time (the script sends each element as it runs)."""
    previous = sent.t
    best = (0.0, "")
    for frame in frames:
        if not frame.incoming or frame.t < sent.t or frame.t > until:
            continue
        if frame.t - previous > best[0]:
            best = (frame.t - previous, frame.label)
        previous = frame.t
    return best


# --- one measurement ---------------------------------------------------------------------------


@dataclass
class Sample:
    """One repetition of one action, in page milliseconds."""

    total: float
    server: float | None = None
    """Rerun request sent -> script_finished received (every run in the window)."""
    runs: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def arm(page: Any, spec: dict[str, Any]) -> None:
    spec = {"quiet": QUIET_MS, "timeout": TIMEOUT_MS, "run": False, **spec}
    page.evaluate("spec => window.__td.arm(spec)", spec)


def result(page: Any, what: str, fatal: bool = True) -> dict[str, Any]:
    """Wait (in the page) for the armed measurement; a timeout stops the benchmark if ``fatal``."""
    outcome = page.evaluate("() => window.__td.watch.done")
    if outcome.get("timeout") and fatal:
        shot = Path(tempfile.gettempdir()) / "review-browser-bench-timeout.png"
        page.screenshot(path=str(shot))
        details = {k: v for k, v in outcome.items() if k != "info"}
        raise SystemExit(f"{what}: no settled state within {TIMEOUT_MS} ms ({details}); {shot}")
    return outcome


def grid_sample(page: Any, outcome: dict[str, Any]) -> Sample:
    """A grid measurement with its server side and phases, from the page's frames."""
    t0, at, end = outcome["t0"], outcome["at"], outcome["end"]
    frames = read_frames(page, t0 - 1, end)
    sent, finished, runs = server_side(frames, t0, end)
    sample = Sample(total=at - t0, runs=runs)
    info = outcome.get("info") or {}
    keys = ("visible", "fallback", "retried", "retriedAll", "tiles")
    sample.extra = {k: info.get(k, 0) for k in keys}
    grids = [f for f in frames if f.incoming and "bidi_component" in f.elements and f.t <= at]
    if sent is not None and finished is not None:
        sample.server = finished.t - sent.t
        sample.extra["gap"] = largest_gap(frames, sent, finished.t)
    if sent is None or not grids:
        return sample
    grid = grids[-1]
    drawn = min(max(outcome["marks"].get("drawn", grid.t), grid.t), at)
    sample.phases = {
        "browser before the request": sent.t - t0,
        "server until the grid's message": grid.t - sent.t,
        "browser: message -> tiles drawn": drawn - grid.t,
        "browser: tiles drawn -> thumbnails loaded": at - drawn,
    }
    sample.extra["grid_bytes"] = grid.grid_bytes
    # After the grid's message: the main thread's long tasks, and the visible thumbnails.
    resources = page.evaluate(
        "([from, srcs]) => window.__td.resources(from, srcs)", [t0, info.get("srcs", [])]
    )
    busy = sum(
        min(task["t"] + task["duration"], drawn) - max(task["t"], grid.t)
        for task in resources["longtasks"]
        if task["t"] < drawn and task["t"] + task["duration"] > grid.t
    )
    chunks = [r for r in resources["scripts"] if r["start"] >= grid.t - 50 and r["end"] <= drawn]
    sample.extra["chunks"] = len(chunks)
    sample.extra["chunk_bytes"] = sum(r["bytes"] for r in chunks)
    loaded = [r for r in resources["thumbs"] if r is not None and r["start"] >= grid.t - 1]
    sample.extra["busy"] = busy
    sample.extra["fetched"] = sum(1 for r in loaded if r["bytes"] > 0)  # else: a cache
    sample.extra["first_thumb"] = min((r["start"] for r in loaded), default=drawn) - drawn
    sample.extra["thumb_wait"] = max((r["end"] - r["start"] for r in loaded), default=0.0)
    if resources["nav"] and not t0:
        sample.extra["html"] = resources["nav"]["html"]
        sample.extra["dcl"] = resources["nav"]["dcl"]
        sample.extra["js_bytes"] = sum(r["bytes"] for r in resources["scripts"] if r["end"] <= at)
        sample.extra["busy_before"] = sum(
            task["duration"] for task in resources["longtasks"] if task["t"] < sent.t
        )
    return sample


# --- the actions -------------------------------------------------------------------------------


class ReviewBrowser:
    """Chromium, signed in as the analyst, measuring the review page of one advertiser."""

    def __init__(
        self, browser: Any, app_url: str, app_pid: int, state: dict[str, Any], control: Any
    ) -> None:
        self.browser = browser
        self.app_url = app_url
        self.app_pid = app_pid
        self.state = state
        self.control = control
        self.last_update = 0.0

    def new_page(self) -> tuple[Any, Any]:
        context = self.browser.new_context(viewport=VIEWPORT, storage_state=self.state)
        context.add_init_script(HARNESS)
        page = context.new_page()
        page.set_default_timeout(30_000)
        return context, page

    def review_url(self, advertiser: str) -> str:
        return f"{self.app_url}/review?advertiser={quote_plus(advertiser)}"

    def clear_server_caches(self) -> None:
        """Streamlit's "Clear caches" (its own message, as the main menu sends it: every query and
        resource cache), then the home page once, which makes the engine and clients again."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        message = list(BackMsg(clear_cache=True).SerializeToString())
        self.control.evaluate(
            "bytes => window.__td.sockets.at(-1).send(new Uint8Array(bytes))", message
        )
        time.sleep(0.2)
        self.control.reload()
        self.control.get_by_role("heading", name="Tagdesk").wait_for()
        self.control.wait_for_function(
            "document.querySelector('[data-testid=stApp]')?.dataset.testScriptState"
            " === 'notRunning'"
        )

    def warm_up(self, url: str) -> None:
        """The review page once, unmeasured: a server that just started imports the page's
        modules on its first run, which no later visitor waits for."""
        self.control.goto(url)
        self.control.locator(".tile").first.wait_for()
        self.control.goto(self.app_url)
        self.control.get_by_role("heading", name="Tagdesk").wait_for()

    def first_render(self, page: Any, url: str) -> Sample:
        page.goto(url, wait_until="commit")
        page.wait_for_function("() => window.__td && window.__td.watch")
        return grid_sample(page, result(page, "first render"))

    def tiles(self, page: Any) -> list[dict[str, Any]]:
        return page.evaluate("() => window.__td.tiles()")

    def page_change(self, page: Any, to: int) -> Sample:
        before = [t["id"] for t in self.tiles(page)]
        box = page.locator(".st-key-review-page input")
        box.fill(str(to))
        arm(
            page,
            {
                "kind": "grid",
                "input": [{"type": "keydown", "key": "Enter"}],
                "notIds": before,
                "run": True,
            },
        )
        box.press("Enter")
        return grid_sample(page, result(page, f"page change to {to}"))

    def pick_type(self, page: Any, pick: str, shown: list[str]) -> Sample:
        page.locator(".st-key-review-type input").click()
        option = page.get_by_role("option", name=pick, exact=True)
        option.wait_for()
        arm(
            page,
            {"kind": "grid", "input": [{"type": "click"}], "types": [*shown, pick], "run": True},
        )
        option.click()
        sample = grid_sample(page, result(page, f"filter change to {[*shown, pick]}"))
        page.keyboard.press("Escape")
        return sample

    def clear_types(self, page: Any) -> None:
        arm(page, {"kind": "grid", "input": [{"type": "click"}], "types": list(TYPES), "run": True})
        page.locator(".st-key-review-type [aria-label='Clear all']").click()
        result(page, "clearing the filter")

    def focus(self, page: Any, tile_id: int) -> None:
        page.locator(f'.tile[data-id="{tile_id}"] img').click()

    def keyboard_fix(self, page: Any, here: dict[str, Any], target: dict[str, Any]) -> Sample:
        key = "1" if target["type"] == "Stock" else "2"
        self.focus(page, here["id"])
        arm(
            page,
            {
                "kind": "key",
                "input": [
                    {"type": "keydown", "key": "ArrowRight"},
                    {"type": "keydown", "key": key},
                ],
                "id": target["id"],
                "value": TYPES[int(key) - 1],
                "quiet": 0,
            },
        )
        page.keyboard.press("ArrowRight")
        page.keyboard.press(key)
        outcome = result(page, "keyboard fix")
        marks = outcome["marks"]
        # Event Timing reports an event after its paint, and only from 16 ms: wait a little.
        find = "t => window.__td.events.find((e) => e.name === 'keydown' && Math.abs(e.t - t) < 1)"
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(find, arg=marks["input1"], timeout=300)
        timing = page.evaluate(find, marks["input1"])
        return Sample(
            total=marks["value"] - marks["input0"],
            phases={
                "between the two keydowns (Playwright)": marks["input1"] - marks["input0"],
                "type key -> frame showing the value": marks["value"] - marks["input1"],
            },
            extra={
                "arrow": marks["focus"] - marks["input0"],
                # Event Timing lists only events of 16 ms or more (input -> next paint).
                "paint": timing["duration"] if timing else None,
                "handler": (timing["end"] - timing["start"]) if timing else None,
            },
        )

    def per_page(self, page: Any, size: int) -> None:
        """Pick the page size, and wait for the grid to settle with it."""
        page.locator(".st-key-review-per").get_by_role("combobox").click()
        option = page.get_by_role("option", name=str(size), exact=True)
        option.wait_for()
        arm(page, {"kind": "grid", "input": [{"type": "click"}], "run": True})
        option.click()
        result(page, f"{size} tiles a page")
        if len(self.tiles(page)) != size:
            raise SystemExit(f"asked for {size} tiles a page, got {len(self.tiles(page))}")

    def discard(self, page: Any) -> None:
        page.locator(".bar button", has_text="Discard").click()
        page.locator(".bar .count").wait_for(state="detached")

    def update(
        self, page: Any, tiles: list[dict[str, Any]]
    ) -> tuple[Sample, Sample | None, str | None]:
        """5 changes with the keys, then ``u``: (-> toast, -> the grid acknowledges, and what
        went wrong when the grid never acknowledged)."""
        # The last Update's toast is closed: a toast the same as the one on screen is not shown
        # again (Streamlit keeps the element), so the next one could not be seen.
        toasts = page.locator('[data-testid="stToast"] button[aria-label="Close"]')
        while toasts.count():
            toasts.first.click()
        page.wait_for_function("!document.querySelector('[data-testid=\"stToast\"]')")
        for tile in tiles:
            self.focus(page, tile["id"])
            page.keyboard.press("1" if tile["type"] == "Stock" else "2")
        page.locator(".bar .count", has_text=f"{len(tiles)} unsaved").wait_for()
        # The Update before this one refreshes the findings in a thread of the app (after 1 s):
        # an analyst's next Update comes later than that, so the app is let finish first.
        time.sleep(max(0.0, self.last_update + 1.5 - time.monotonic()))
        wait_idle(self.app_pid)
        arm(
            page,
            {
                "kind": "update",
                "input": [{"type": "keydown", "key": "u"}],
                "run": True,
                "quiet": 0,
                "toast": "fix(es) saved",
                "undo": True,
                "timeout": ACK_TIMEOUT_MS,
            },
        )
        page.keyboard.press("u")
        outcome = result(page, "Update", fatal=False)
        self.last_update = time.monotonic()
        if outcome.get("timeout") and "toast" not in outcome["marks"]:
            result(page, "Update")  # nothing at all: stop, with a screenshot
        toast, ack = self.update_samples(page, outcome)
        note = None
        if ack is None:
            note = self.unacknowledged(page, outcome)
            self.discard(page)
        return toast, ack, note

    def unacknowledged(self, page: Any, outcome: dict[str, Any]) -> str:
        """Why the grid shows the saved changes as unsaved: the nonce it sent, the ones the
        server's grid messages carried since."""
        frames = read_frames(page, outcome["t0"] - 1, outcome["end"])
        sent = [n for f in frames if not f.incoming for n in f.nonces]
        acks = [n for f in frames if f.incoming for n in f.nonces]
        bar = " | ".join(page.locator(".bar").inner_text().split("\n"))
        verdict = (
            "the server acknowledged it, the grid ignored the ack"
            if sent and sent[0] in acks
            else "no grid message carried its ack"
        )
        return (
            f"toast after {outcome['marks']['toast'] - outcome['t0']:,.0f} ms, no ack in "
            f"{ACK_TIMEOUT_MS / 1000:.0f} s: {verdict} (sent {sent[:1]}, acks {acks[-2:]}); "
            f"bar: {bar}"
        )

    def update_samples(self, page: Any, outcome: dict[str, Any]) -> tuple[Sample, Sample | None]:
        t0, marks, end = outcome["t0"], outcome["marks"], outcome["end"]
        frames = read_frames(page, t0 - 1, end)
        sent, finished, runs = server_side(frames, t0, end)
        server = finished.t - sent.t if sent and finished else None
        toast = Sample(total=marks["toast"] - t0, server=server, runs=runs)
        ack = Sample(total=marks["ack"] - t0, server=server, runs=runs) if "ack" in marks else None
        if sent is None:
            return toast, ack
        incoming = [f for f in frames if f.incoming and f.t >= sent.t]
        toasts = [f for f in incoming if "toast" in f.elements and f.t <= marks["toast"]]
        # The run starts (new_session), runs the grid's callback (save + push), then the script,
        # whose first message is the page config.
        started = next((f for f in incoming if f.kind == "new_session"), None)
        first = next(
            (
                f
                for f in incoming
                if started and f.t >= started.t and f.kind == "page_config_changed"
            ),
            None,
        )
        if toasts and started and first:
            toast.phases = {
                "browser before the request": sent.t - t0,
                "server: request -> run starts": started.t - sent.t,
                "server: the callback (save + push)": first.t - started.t,
                "server: script until the toast": toasts[-1].t - first.t,
                "browser: toast shown": marks["toast"] - toasts[-1].t,
            }
        if ack is not None:
            grids = [f for f in incoming if "bidi_component" in f.elements and f.t <= marks["ack"]]
            if grids and started and first:
                ack.phases = {
                    "browser before the request": sent.t - t0,
                    "server: request -> run starts": started.t - sent.t,
                    "server: the callback (save + push)": first.t - started.t,
                    "server: script until the grid's message": grids[-1].t - first.t,
                    "browser: grid render": marks["ack"] - grids[-1].t,
                }
        if finished is not None:
            toast.extra["gap"] = largest_gap(frames, sent, finished.t)
            if ack is not None:
                ack.extra["gap"] = toast.extra["gap"]
        return toast, ack


# --- one sitemap -------------------------------------------------------------------------------


@dataclass
class Report:
    label: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    background: float = 0.0
    notes: list[str] = field(default_factory=list)
    """What went wrong on the way (an Update the grid never acknowledged)."""

    def add(self, action: str, sample: Sample) -> None:
        self.samples.setdefault(action, []).append(sample)


def measure_sitemap(
    bench: ReviewBrowser, label: str, advertiser: str, repeat: int, max_wait: float
) -> Report:
    report = Report(label)
    url = bench.review_url(advertiser)
    common.wait_for_quiet(max_wait)
    with common.LoadMeter() as load:
        step(f"{label}: first render, cold x{repeat}")
        bench.warm_up(url)
        for _ in range(repeat):
            bench.clear_server_caches()
            context, page = bench.new_page()
            try:
                report.add("first render, cold", bench.first_render(page, url))
            finally:
                context.close()

        step(f"{label}: first render, warm x{repeat}")
        context, page = bench.new_page()
        try:
            bench.first_render(page, url)  # the context's HTTP cache, the server's caches
            for _ in range(repeat):
                report.add("first render, warm", bench.first_render(page, url))

            step(f"{label}: page change x{repeat}")
            last = int(page.locator(".st-key-review-page input").get_attribute("max") or 1)
            if last < 2:
                raise SystemExit(f"{label}: one page only, no page change to measure")
            for n in range(repeat):  # the next page each time (from the first after the last)
                report.add("page change", bench.page_change(page, 2 + n % (last - 1)))

            step(f"{label}: filter change x{repeat}")
            # Each pick a combination not shown before; the clearing in between is not timed.
            picks: list[str] = []
            shown: list[str] = []
            for first, second in (
                ("Stock", "Placeholder"),
                ("Dealer", "Placeholder"),
                ("Placeholder", "Stock"),
            ):
                picks += [first, second]
            for n, pick in enumerate(picks[:repeat]):
                if n % 2 == 0 and shown:
                    bench.clear_types(page)
                    shown = []
                report.add("filter change", bench.pick_type(page, pick, shown))
                shown.append(pick)
            if shown:
                bench.clear_types(page)

            step(f"{label}: keyboard fix x{repeat}")
            keyboard_fixes(bench, page, report, "keyboard fix", repeat)

            step(f"{label}: Update of {UPDATE_CHANGES} changes x{repeat}")
            for _ in range(repeat):  # the same tiles each time, flipped to another type
                fixable = [t for t in bench.tiles(page) if t["fixable"]][:UPDATE_CHANGES]
                toast, ack, note = bench.update(page, fixable)
                report.add("Update -> toast", toast)
                if ack is not None:
                    report.add("Update -> grid acknowledges", ack)
                else:
                    report.notes.append(f"Update not acknowledged by the grid: {note}")

            # The grid draws every tile again on each key: the largest page is the worst case.
            step(f"{label}: keyboard fix x{repeat}, {max(PAGE_SIZES)} tiles a page")
            bench.per_page(page, max(PAGE_SIZES))
            action = f"keyboard fix, {max(PAGE_SIZES)} tiles a page"
            keyboard_fixes(bench, page, report, action, repeat)
        finally:
            context.close()
    report.background = load.background
    return report


def keyboard_fixes(
    bench: ReviewBrowser, page: Any, report: Report, action: str, repeat: int
) -> None:
    """``repeat`` keyboard fixes on the first tiles of the page, then Discard."""
    tiles = bench.tiles(page)
    pairs = [(a, b) for a, b in itertools.pairwise(tiles) if b["fixable"]]
    if len(pairs) < repeat:
        raise SystemExit(f"{report.label}: only {len(pairs)} fixable tiles on the page")
    for here, target in pairs[:repeat]:
        report.add(action, bench.keyboard_fix(page, here, target))
    bench.discard(page)


# --- the report --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def print_report(report: Report, repeat: int) -> list[str]:
    """The table of one sitemap; returns the lines on missed targets."""
    rows = []
    missed = []
    for action, samples in report.samples.items():
        totals = [s.total for s in samples]
        servers = [s.server for s in samples if s.server is not None]
        target = TARGETS_MS.get(action)
        med = median(totals)
        met = "" if target is None else ("met" if med < target else "MISSED")
        server = (
            "— (no round trip)"
            if action.startswith("keyboard fix")
            else ms(median(servers) if servers else None)
        )
        runs = {s.runs for s in samples}
        if servers and runs != {1}:
            server += f" ({'/'.join(str(r) for r in sorted(runs))} runs)"
        browser = f"{med:,.0f} ms ({p90(totals):,.0f})"
        if len(samples) != repeat:
            browser += f" of {len(samples)}"
        rows.append([action, browser, server, "—" if target is None else f"< {target:,} ms", met])
        if met == "MISSED":
            missed.append(f"{report.label}, {action}: {med:,.0f} ms; {dominant(samples)}")
    if report.notes:
        missing = "Update -> grid acknowledges"
        if missing not in report.samples:
            rows.append([missing, "never", "—", f"< {TARGETS_MS[missing]:,} ms", "MISSED"])
        missed += [f"{report.label}: {note}" for note in report.notes]
    common.print_table(
        f"{report.label} (median of {repeat}, p90 in brackets; other load "
        f"{report.background:.2f} cores)",
        [
            "action",
            "browser median (p90)",
            "server side: rerun -> script finished",
            "target",
            "met?",
        ],
        rows,
    )
    print_phases(report)
    for note in report.notes:
        print(f"  {note}")
    return missed


def dominant(samples: Sequence[Sample]) -> str:
    """The largest phase of an action, with what explains it."""
    phases = phase_medians(samples)
    if not phases:
        return "no breakdown"
    name, value = max(phases.items(), key=lambda item: item[1])
    total = median([s.total for s in samples])
    why = ""
    if name.endswith("tiles drawn") and _med(samples, "busy") is not None:
        why = f" ({_drawn_detail(samples)})"
    elif name.endswith("thumbnails loaded") and _med(samples, "first_thumb") is not None:
        why = f" ({_thumb_detail(samples)})"
    elif name.startswith("browser before") and _med(samples, "dcl") is not None:
        why = f" ({_load_detail(samples)})"
    elif name.startswith("server"):
        gaps = [s.extra["gap"] for s in samples if s.extra.get("gap")]
        if gaps:
            gap, label = max(gaps)
            why = f" (the longest silence {gap:,.0f} ms, before {label})"
    return f"dominated by {name}: {value:,.0f} ms ({value / total:.0%}){why}"


def _drawn_detail(samples: Sequence[Sample]) -> str:
    return (
        f"main-thread long tasks {_med(samples, 'busy'):,.0f} ms, "
        f"{_med(samples, 'chunks'):,.0f} of Streamlit's JS chunks loaded "
        f"({(_med(samples, 'chunk_bytes') or 0) / 1024:,.0f} KiB over the network)"
    )


def _thumb_detail(samples: Sequence[Sample]) -> str:
    fetched = _med(samples, "fetched") or 0
    visible = _med(samples, "visible") or 0
    if fetched:
        text = (
            f"{fetched:.0f} of {visible:.0f} visible thumbnails fetched (the rest from the "
            f"browser's cache), first request +{max(0.0, _med(samples, 'first_thumb') or 0):,.0f}"
            f" ms after the tiles, the slowest request {_med(samples, 'thumb_wait'):,.0f} ms"
        )
    else:
        text = f"all {visible:.0f} visible thumbnails from the browser's cache"
    retried = sum(s.extra.get("retried", 0) for s in samples)
    fallback = sum(s.extra.get("fallback", 0) for s in samples)
    if retried or fallback:
        text += f"; {retried} retried and {fallback} 'no image' in the viewports of all runs"
    return text


def _load_detail(samples: Sequence[Sample]) -> str:
    return (
        f"HTML {_med(samples, 'html'):,.0f} ms, DOMContentLoaded {_med(samples, 'dcl'):,.0f} ms, "
        f"{(_med(samples, 'js_bytes') or 0) / 1024:,.0f} KiB of scripts, main-thread long tasks "
        f"{_med(samples, 'busy_before'):,.0f} ms before the request"
    )


def phase_medians(samples: Sequence[Sample]) -> dict[str, float]:
    names: dict[str, None] = {}
    for sample in samples:
        names.update(dict.fromkeys(sample.phases))
    return {name: median([s.phases[name] for s in samples if name in s.phases]) for name in names}


def _med(samples: Sequence[Sample], key: str) -> float | None:
    values = [s.extra[key] for s in samples if s.extra.get(key) is not None]
    return median(values) if values else None


def print_phases(report: Report) -> None:
    print("  where the time goes (medians, ms):")
    for action, samples in report.samples.items():
        phases = phase_medians(samples)
        lines = [" | ".join(f"{name} {value:,.0f}" for name, value in phases.items())]
        if action.startswith("keyboard fix"):
            paints = [s.extra["paint"] for s in samples if s.extra.get("paint") is not None]
            handlers = [s.extra["handler"] for s in samples if s.extra.get("handler") is not None]
            line = f"ArrowRight -> frame with the next tile focused {_med(samples, 'arrow'):,.0f}"
            if paints:
                line += (
                    f"; Event Timing of the type key ({len(paints)} of {len(samples)} over 16 ms): "
                    f"handler {median(handlers):,.0f}, key -> next paint {median(paints):,.0f}"
                )
            else:
                line += "; Event Timing: every type key painted within 16 ms"
            lines.append(line)
        if _med(samples, "html") is not None:
            lines.append(f"page load: {_load_detail(samples)}")
        if _med(samples, "busy") is not None:
            lines.append(f"message -> tiles drawn: {_drawn_detail(samples)}")
            lines.append(f"tiles drawn -> thumbnails loaded: {_thumb_detail(samples)}")
            anywhere = sum(s.extra.get("retriedAll", 0) for s in samples)
            if anywhere:
                lines.append(
                    f"thumbnails retried after an error, anywhere on the page at settle time: "
                    f"{anywhere} in {len(samples)} runs"
                )
        gaps = [s.extra["gap"] for s in samples if s.extra.get("gap")]
        if gaps:
            labels = [label for _, label in gaps]
            common_label = max(set(labels), key=labels.count)
            lines.append(
                "server's longest silence in the run: "
                f"{median([g for g, label in gaps if label == common_label]):,.0f} before "
                f"{common_label} ({labels.count(common_label)} of {len(gaps)} runs)"
            )
        print(f"    {action}: {lines[0] or 'no WebSocket breakdown'}")
        for line in lines[1:]:
            print(f"      {line}")
    sizes = [
        s.extra["grid_bytes"]
        for s in report.samples.get("page change", [])
        if "grid_bytes" in s.extra
    ]
    if sizes:
        js, css, data = sizes[-1]
        print(
            f"  the grid's message on every run: {sum(sizes[-1]) / 1024:,.1f} KiB, of which the "
            f"component's JS + CSS {(js + css) / 1024:,.1f} KiB and its data {data / 1024:,.1f} KiB"
        )


# --- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def temp_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="review-browser-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def sign_in(browser: Any, app_url: str) -> tuple[dict[str, Any], Any, Any]:
    """Sign in once; returns the storage state (the session cookie) and a signed-in home page."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(HARNESS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_url)
    page.get_by_label("Username", exact=True).fill(ANALYST[0])
    page.get_by_label("Password", exact=True).fill(ANALYST[1])
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Tagdesk").wait_for()
    deadline = time.monotonic() + 10
    while not any(c["name"] == "tagdesk_session" for c in context.cookies()):
        if time.monotonic() > deadline:
            raise SystemExit("signed in, but the browser got no session cookie")
        time.sleep(0.1)
    return context.storage_state(), context, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=common.DEFAULT_WORK,
        help=f"work dir of the demo, the model and the logs (default {common.DEFAULT_WORK})",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=10.0,
        help="seconds to wait for other processes to leave the CPUs before each sitemap "
        "(default 10; 0 measures at once)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each action (5)")
    parser.add_argument("--items", type=int, default=5000, help="items of the large sitemap")
    parser.add_argument("--skip-large", action="store_true", help="only the demo sitemap")
    parser.add_argument("--keep", action="store_true", help="keep the temporary app database")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"this benchmark needs Debian's chromium at {CHROMIUM}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    data = common.prepare(args.work)
    items = 0 if args.skip_large else args.items
    with temp_dir(args.keep) as tmp, common.Services() as stack:
        app = start_stack(stack, data, tmp, items)
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        state, control_context, control = sign_in(browser, app.app_url)
        bench = ReviewBrowser(browser, app.app_url, app.app_pid, state, control)
        reports = [
            measure_sitemap(
                bench,
                f"demo: {app.demo_advertiser} ({app.demo_items:,} items)",
                app.demo_advertiser,
                args.repeat,
                args.max_wait,
            )
        ]
        if items:
            reports.append(
                measure_sitemap(
                    bench, f"{items:,}-item sitemap", LARGE_ADVERTISER, args.repeat, args.max_wait
                )
            )
        control_context.close()

    print(
        f"\nReview page in Chromium {VIEWPORT['width']}x{VIEWPORT['height']}, "
        "signed in as an analyst"
    )
    print(common.machine())
    if items:
        print(f"{items:,}-item sitemap: {app.large_source}")
    missed = []
    for report in reports:
        missed += print_report(report, args.repeat)
    if missed:
        print("\nMissed targets:")
        for line in missed:
            print(f"  {line}")
    print(f"\n(whole run {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    common.run_main(main)
