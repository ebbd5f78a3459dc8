"""The client of the ML server, used by scrapes and by the manual-fix push.

It goes through the same guarded client as every other outbound request; the ML servers' own
``host:port`` entries are allow-listed because the operator configured them.

**Several replicas** (``TAGGING_ML_URLS``): each call goes to the least busy replica that is up
(the fewest calls of this client in flight there, taking turns between equals), and a call that
finds its replica unavailable (refused, reset, timed out, 5xx) is retried on the next one; a
replica that failed is left alone for a while (2 s, doubling up to a minute), and its ``/health``
is checked before it gets work again. Only when every replica failed does a call raise
:class:`~tagging.errors.MLServerUnavailable`. ``/classify`` and the cache's reads are safe to
retry (a classification is cached by image_key and the same again); so is a fix push (its id).
One URL (``TAGGING_ML_URL``, or one load balancer in front of the replicas) works as before: one
attempt, its error as it is.

**A connection per batch.** A server's uvicorn worker processes share one listening socket, and
the kernel hands each *connection* to one of them: over kept-alive connections every batch of a
scrape went to the same worker process (measured on the demo: all of the ML CPU in one of two
workers). So each ``/classify`` batch goes on a connection of its own (``Connection: close``) and
is accepted by whichever worker is free (then 60/40, and 1.36× the images/s of one worker); a load
balancer that balances connections spreads batches the same way. A new connection on a LAN costs
a fraction of a millisecond, a batch of 64 images a hundred or more. The other calls (fix pushes,
health checks, reads) keep their connections.

**Fix pushes and cache stores.** A fix must reach every cache *store*, not every replica. The
replicas say which store they use: ``/health`` reports the store's generation, a random id made
when the store was created, so two replicas with the same generation share one store (the
production layout: one PostgreSQL store for all of them). :meth:`MLClient.put_fix` groups the
replicas by generation and sends the fix to one replica of each group, failing over within the
group: with a shared store that is any one replica, with separate stores (a SQLite file each) it
is every one. A group none of whose replicas answers fails the push
(:class:`~tagging.errors.MLServerUnavailable`), so the fix stays pending and the worker retries
it; the groups that took it ignore it the second time (the fix id). A replica never reached since
this client started is not waited for: once it answers, :meth:`MLClient.health` reports a
generation that includes its store, and the worker, seeing a new generation, pushes every fix
again.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlencode

from pydantic import BaseModel, ValidationError

from tagging.config import Settings
from tagging.errors import (
    FetchError,
    FetchTimeoutError,
    MLServerAuthError,
    MLServerBadResponse,
    MLServerUnavailable,
)
from tagging.ingest.fetch import GuardedClient, client_from_settings
from tagging.server.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    FixResult,
    Health,
    ImageFix,
    ImageRecord,
)

Model = TypeVar("Model", bound=BaseModel)
Result = TypeVar("Result")

RETRY_AFTER_SECONDS = 2.0
"""How long a replica that failed is left alone before its health is checked again."""
MAX_RETRY_AFTER_SECONDS = 60.0
"""The longest wait: the wait doubles with each failure in a row up to this."""
HEALTH_TIMEOUT_SECONDS = 5.0
"""A ``/health`` check's timeout (the endpoint reads one count from the store)."""


@dataclass
class Replica:
    """What this client knows of one ML server replica."""

    url: str
    in_flight: int = 0
    """Calls of this client running there now."""
    failures: int = 0
    """Failures in a row; 0 while it answers."""
    down_until: float = 0.0
    """``time.monotonic()`` before which it gets no work while others are up."""
    generation: str | None = None
    """The cache generation its ``/health`` reported last (which store it uses)."""
    last_error: str | None = None
    calls: int = 0
    """Calls sent there (answered or not), for the benchmarks and the tests."""

    @property
    def up(self) -> bool:
        return self.failures == 0


class MLClient:
    """Typed calls to the ML server replicas; every failure is an
    :class:`~tagging.errors.MLServerError`.

    Args:
        base_url: One URL (a server, or a load balancer), or several replicas' URLs.
        token: The bearer token (the same on every replica).
        client: The guarded client, allow-listing every replica's ``host:port``.
        timeout: Seconds for one call to one replica.
        health_timeout: Seconds for one ``/health`` check of a replica that failed.
        retry_after: Seconds a replica that failed is left alone (doubling, capped at
            ``max_retry_after``), unless every other one is down too.
        connection_per_batch: Send each ``/classify`` batch on a connection of its own
            (``Connection: close``), so that it goes to whichever worker process of the server
            (or backend of a load balancer) is free; see the module docstring.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None,
        client: GuardedClient,
        *,
        timeout: float = 120.0,
        health_timeout: float = HEALTH_TIMEOUT_SECONDS,
        retry_after: float = RETRY_AFTER_SECONDS,
        max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
        connection_per_batch: bool = True,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        urls = list(dict.fromkeys(url.rstrip("/") for url in urls))
        if not urls:
            raise ValueError("MLClient needs at least one ML server URL")
        self.replicas = [Replica(url) for url in urls]
        self.base_url = urls[0]
        """The first replica (the only one with one URL)."""
        self.token = token
        self.client = client
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self.connection_per_batch = connection_per_batch
        self._lock = threading.Lock()
        # Each task of a worker builds its own client: starting every one at the first replica
        # sent every small scrape (one batch) to it. A random first turn spreads them.
        self._turn = random.randrange(len(self.replicas))

    @classmethod
    def from_settings(cls, settings: Settings, client: GuardedClient | None = None) -> MLClient:
        """A client of ``TAGGING_ML_URLS``, else ``TAGGING_ML_URL`` (``settings.ml_replicas``)."""
        client = client or client_from_settings(settings, extra_allowed=settings.ml_host_entries())
        return cls(settings.ml_replicas, settings.ml_token, client)

    @property
    def base_urls(self) -> list[str]:
        """Every replica's URL, in the configured order."""
        return [replica.url for replica in self.replicas]

    # --- the calls ---------------------------------------------------------------------------

    def classify(
        self,
        urls: list[str],
        *,
        color: bool = True,
        thumbnails: bool = True,
        advertiser: str | None = None,
        known_keys: Collection[str] | None = None,
    ) -> ClassifyResponse:
        """Classify ``urls`` for ``advertiser``; exactly one result per URL, in order.

        ``known_keys``: image_keys the caller already has a thumbnail for (their results carry
        none). With several replicas the batch goes to the least busy one that is up, and to the
        next one if that one is unavailable.
        """
        request = ClassifyRequest(
            urls=urls,
            color=color,
            thumbnails=thumbnails,
            advertiser=advertiser,
            known_keys=list(known_keys or ()),
        )
        body = request.model_dump()

        def call(replica: Replica) -> ClassifyResponse:
            return self._call_at(replica, "POST", "/classify", ClassifyResponse, body=body)

        response = self._with_failover(call)
        if [r.url for r in response.results] != urls:
            raise MLServerBadResponse(
                f"the ML server answered {len(response.results)} results for {len(urls)} URLs"
            )
        return response

    def get_image(self, image_key: str, advertiser: str | None = None) -> ImageRecord | None:
        """The ML cache's record of ``image_key`` (as ``advertiser`` sees it), or None."""
        query = f"?{urlencode({'advertiser': advertiser})}" if advertiser else ""

        def call(replica: Replica) -> ImageRecord:
            return self._call_at(replica, "GET", f"/images/{image_key}{query}", ImageRecord)

        try:
            return self._with_failover(call)
        except _NotFound:
            return None

    def put_fix(self, image_key: str, fix: ImageFix) -> FixResult:
        """Push a manual fix to the ML cache (idempotent when ``fix.fix_id`` is set).

        With several replicas: to one replica of every cache store (see the module docstring).

        Raises:
            MLServerUnavailable: no replica of some store took it (it is to be pushed again).
        """
        body = fix.model_dump(mode="json", exclude_none=True)

        def call(replica: Replica) -> FixResult:
            return self._call_at(replica, "PUT", f"/images/{image_key}", FixResult, body=body)

        if len(self.replicas) == 1:
            return self._with_failover(call)
        results: list[FixResult] = []
        failed: list[str] = []
        for group in self._store_groups():
            try:
                results.append(self._with_failover(call, among=group))
            except MLServerUnavailable as exc:
                failed.append(str(exc))
        if failed:
            raise MLServerUnavailable(
                f"the fix of {image_key} reached {len(results)} of "
                f"{len(results) + len(failed)} ML cache stores: " + "; ".join(failed)
            )
        return next((r for r in results if r.applied), results[0])

    def health(self) -> Health:
        """The ML server's health; with several replicas, of every one that answers.

        The ``cache_generation`` then covers every store the answering replicas use (their
        generations joined, when they differ), so that it changes whenever any of those stores
        starts empty, or a replica with a store of its own joins.

        Raises:
            MLServerUnavailable: no replica answers.
        """
        if len(self.replicas) == 1:
            return self._call_at(self.replicas[0], "GET", "/health", Health)
        answers = self.check_health()
        healthy = [h for h in answers.values() if isinstance(h, Health)]
        if not healthy:
            raise MLServerUnavailable(
                "no ML server replica answers: "
                + "; ".join(f"{url}: {error}" for url, error in answers.items())
            )
        generations = sorted({h.cache_generation for h in healthy})
        return healthy[0].model_copy(update={"cache_generation": "+".join(generations)})

    def check_health(self) -> dict[str, Health | MLServerUnavailable]:
        """Ask every replica's ``/health`` now; what each answered, or why it did not.

        Raises:
            MLServerAuthError, MLServerBadResponse: a replica answered, but not as it should.
        """
        answers: dict[str, Health | MLServerUnavailable] = {}
        for replica in self.replicas:
            try:
                answers[replica.url] = self._probe(replica)
            except MLServerUnavailable as exc:
                answers[replica.url] = exc
        return answers

    # --- choosing replicas --------------------------------------------------------------------

    def _with_failover(
        self, call: Callable[[Replica], Result], among: Sequence[Replica] | None = None
    ) -> Result:
        """``call`` on the best replica, then on the next while they are unavailable.

        Every replica is tried at most once: the ones up or done resting (least busy first), then
        the ones still resting (soonest back first). A replica that failed is given work again
        only after its ``/health`` answers, unless every other one failed too.
        """
        candidates = self._order(among if among is not None else self.replicas)
        if len(self.replicas) == 1:
            return self._sent(candidates[0], call)
        errors: list[str] = []
        last: MLServerUnavailable | None = None
        for replica in candidates:
            try:
                if not replica.up and replica.down_until <= time.monotonic():
                    self._probe(replica)  # done resting: back only if its health answers
                return self._sent(replica, call)
            except MLServerUnavailable as exc:
                errors.append(f"{replica.url}: {exc}")
                last = exc
        raise MLServerUnavailable(
            f"no ML server replica could take the call ({len(errors)} tried): " + "; ".join(errors)
        ) from last

    def _order(self, replicas: Sequence[Replica]) -> list[Replica]:
        """The replicas that may get work (up, or done resting: they are checked first) by calls
        in flight, equals taking turns; then the ones still resting, soonest back first."""
        now = time.monotonic()
        with self._lock:
            count = len(self.replicas)
            turn = self._turn
            self._turn = (self._turn + 1) % count
            index = {id(replica): i for i, replica in enumerate(self.replicas)}
            ready = sorted(
                (r for r in replicas if r.up or r.down_until <= now),
                key=lambda r: (r.in_flight, (index[id(r)] - turn) % count),
            )
            resting = sorted(
                (r for r in replicas if not r.up and r.down_until > now),
                key=lambda r: r.down_until,
            )
        return ready + resting

    def _sent(self, replica: Replica, call: Callable[[Replica], Result]) -> Result:
        """``call`` at ``replica``, counting it in flight; an unavailable replica rests."""
        with self._lock:
            replica.in_flight += 1
            replica.calls += 1
        try:
            result = call(replica)
        except MLServerUnavailable as exc:
            self._failed(replica, exc)
            raise
        finally:
            with self._lock:
                replica.in_flight -= 1
        self._answered(replica)
        return result

    def _probe(self, replica: Replica) -> Health:
        """``/health`` of ``replica``: records its store's generation, or that it is down."""
        try:
            health = self._call_at(
                replica, "GET", "/health", Health, timeout=min(self.health_timeout, self.timeout)
            )
        except MLServerUnavailable as exc:
            self._failed(replica, exc)
            raise
        self._answered(replica, health.cache_generation)
        return health

    def _answered(self, replica: Replica, generation: str | None = None) -> None:
        with self._lock:
            replica.failures, replica.down_until, replica.last_error = 0, 0.0, None
            if generation is not None:
                replica.generation = generation

    def _failed(self, replica: Replica, exc: MLServerUnavailable) -> None:
        with self._lock:
            replica.failures += 1
            rest = min(self.retry_after * 2 ** (replica.failures - 1), self.max_retry_after)
            replica.down_until = time.monotonic() + rest
            replica.last_error = str(exc)

    def _store_groups(self) -> list[list[Replica]]:
        """The replicas grouped by the cache store they use (their ``/health`` generation).

        Replicas whose store is not known yet are asked first (unless resting after a failure);
        those that do not answer are left out (see the module docstring).
        """
        now = time.monotonic()
        for replica in self.replicas:
            if replica.generation is None and (replica.up or replica.down_until <= now):
                try:
                    self._probe(replica)
                except MLServerUnavailable:
                    continue
        groups: dict[str, list[Replica]] = {}
        for replica in self.replicas:
            if replica.generation is not None:
                groups.setdefault(replica.generation, []).append(replica)
        if not groups:
            raise MLServerUnavailable(
                "no ML server replica answers: "
                + "; ".join(f"{r.url}: {r.last_error}" for r in self.replicas)
            )
        return list(groups.values())

    # --- one HTTP call ------------------------------------------------------------------------

    def _call_at(
        self,
        replica: Replica,
        method: str,
        path: str,
        model: type[Model],
        *,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Model:
        base_url = replica.url
        url = base_url + path
        timeout = self.timeout if timeout is None else timeout
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.connection_per_batch and path == "/classify":
            headers["Connection"] = "close"
        try:
            result = self.client.request_json(
                method, url, json=body, headers=headers, timeout=timeout
            )
        except FetchTimeoutError as exc:
            raise MLServerUnavailable(f"the ML server at {base_url} timed out") from exc
        except FetchError as exc:
            status = getattr(exc, "status", None)
            if status is None:
                raise MLServerUnavailable(
                    f"the ML server at {base_url} cannot be reached: {exc}"
                ) from exc
            return self._raise_for_status(status, url, str(exc))
        if result.status >= 400:
            return self._raise_for_status(
                result.status, url, result.body[:300].decode(errors="replace")
            )
        try:
            return model.model_validate(json.loads(result.body))
        except (ValueError, ValidationError) as exc:
            raise MLServerBadResponse(
                f"the ML server answered {method} {path} with something that is not a valid "
                f"{model.__name__}: {str(exc)[:200]}"
            ) from exc

    def _raise_for_status(self, status: int, url: str, detail: str) -> NoReturn:
        if status in (401, 403):
            raise MLServerAuthError(
                f"the ML server refused our token ({status}): check TAGGING_ML_TOKEN"
            )
        if status == 404:
            raise _NotFound(url)
        if status >= 500:
            raise MLServerUnavailable(f"the ML server failed ({status}) on {url}: {detail}")
        raise MLServerBadResponse(f"the ML server answered {status} on {url}: {detail}")


class _NotFound(MLServerBadResponse):
    pass
