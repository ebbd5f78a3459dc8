"""The client of the ML server, used by scrapes and by the manual-fix push.

It goes through the same guarded client as every other outbound request; the ML server's own
``host:port`` is allow-listed because the operator configured it.
"""

from __future__ import annotations

import json
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


class MLClient:
    """Typed calls to the ML server; every failure is an :class:`~tagging.errors.MLServerError`."""

    def __init__(
        self, base_url: str, token: str | None, client: GuardedClient, *, timeout: float = 120.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.client = client
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings, client: GuardedClient | None = None) -> MLClient:
        client = client or client_from_settings(settings, extra_allowed=[settings.ml_host_entry()])
        return cls(settings.ml_url, settings.ml_token, client)

    def classify(
        self,
        urls: list[str],
        *,
        color: bool = True,
        thumbnails: bool = True,
        advertiser: str | None = None,
    ) -> ClassifyResponse:
        """Classify ``urls`` for ``advertiser``; exactly one result per URL, in order."""
        request = ClassifyRequest(
            urls=urls, color=color, thumbnails=thumbnails, advertiser=advertiser
        )
        response = self._call("POST", "/classify", ClassifyResponse, body=request.model_dump())
        if [r.url for r in response.results] != urls:
            raise MLServerBadResponse(
                f"the ML server answered {len(response.results)} results for {len(urls)} URLs"
            )
        return response

    def get_image(self, image_key: str, advertiser: str | None = None) -> ImageRecord | None:
        """The ML cache's record of ``image_key`` (as ``advertiser`` sees it), or None."""
        query = f"?{urlencode({'advertiser': advertiser})}" if advertiser else ""
        try:
            return self._call("GET", f"/images/{image_key}{query}", ImageRecord)
        except _NotFound:
            return None

    def put_fix(self, image_key: str, fix: ImageFix) -> FixResult:
        """Push a manual fix to the ML cache (idempotent when ``fix.fix_id`` is set)."""
        return self._call(
            "PUT",
            f"/images/{image_key}",
            FixResult,
            body=fix.model_dump(mode="json", exclude_none=True),
        )

    def health(self) -> Health:
        return self._call("GET", "/health", Health)

    def _call(
        self, method: str, path: str, model: type[Model], *, body: dict[str, Any] | None = None
    ) -> Model:
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            result = self.client.request_json(
                method, url, json=body, headers=headers, timeout=self.timeout
            )
        except FetchTimeoutError as exc:
            raise MLServerUnavailable(f"the ML server at {self.base_url} timed out") from exc
        except FetchError as exc:
            status = getattr(exc, "status", None)
            if status is None:
                raise MLServerUnavailable(
                    f"the ML server at {self.base_url} cannot be reached: {exc}"
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
