"""A page's own state (its pickers and filters): kept in one place, ``st.session_state``, owned by
the widgets, and mirrored in the URL so that a view can be shared or linked from elsewhere.

Why: a widget's identity includes its parameters unless it has a ``key``. Seeding a picker with
``index=``/``default=``/``value=`` read from the URL that the run before wrote made it a new
widget on every other run, and the browser's pick for the widget it was shown was dropped: in a
real browser every second pick was silently thrown away (AppTest does not see it). So:

* every widget of the state has a ``key`` (:meth:`PageState.key`) and no ``index=``/``default=``
  /``value=``: its value is ``st.session_state[key]``, set here before the widget runs;
* the URL is read only when the page is entered (a new session, a followed link, the navigation);
  on the page's own reruns the widgets are the state, and the URL only follows them
  (:meth:`PageState.save`, after the widgets have run);
* Streamlit drops the keys of widgets not drawn in a run (another page, a branch not taken): the
  values are also kept in a non-widget key (the page's memory) and restored from it, so a page left
  and entered again from the navigation (an empty URL) shows what it showed.

Usage, in a page script::

    state = PageState("review", [Field("advertiser", None), Field("type", (), many=True)])
    state.enter()                                  # first thing, before any of its widgets
    state.keep_within("advertiser", names)         # a value the widget can show
    name = st.selectbox("Advertiser", names, key=state.key("advertiser"))
    ...
    state.save()                                   # after its widgets: remember, mirror the URL
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st


@dataclass(frozen=True)
class Field:
    """One value of a page's state, a widget's value, and its query parameter ``name``."""

    name: str
    default: Any
    """The value when neither the URL nor the page's memory gives one; never in the URL."""
    many: bool = False
    """A list (a multiselect): one query parameter per value (``?type=Stock&type=Dealer``)."""
    parse: Callable[[str], Any] = str
    """The value of a query parameter's text; a ``ValueError`` ignores it."""


class PageState:
    """The state of the page ``page``: see the module's docstring."""

    def __init__(self, page: str, fields: Sequence[Field]) -> None:
        self.page = page
        self.fields = {f.name: f for f in fields}
        self.memory_key = f"{page}:memory"  # (no widget key looks like it: they use a dash)

    def key(self, name: str) -> str:
        """The session-state key of the widget showing ``name`` (also its ``.st-key-`` class)."""
        return f"{self.page}-{name}"

    def value(self, name: str) -> Any:
        return st.session_state.get(self.key(name), self.fields[name].default)

    def enter(self) -> None:
        """Set the widgets' values before they run: from the URL when the page is entered with
        query parameters of its own (a link), else from the page's memory, else the defaults.
        On the page's own reruns, only values whose widgets were not drawn are restored."""
        memory: dict[str, Any] | None = st.session_state.get(self.memory_key)
        entered = memory is None or not any(self.key(n) in st.session_state for n in self.fields)
        from_url = self._from_url() if entered else None
        for name, field in self.fields.items():
            if from_url is not None:
                value = from_url.get(name, field.default)
            elif self.key(name) in st.session_state:
                continue
            else:
                value = (memory or {}).get(name, field.default)
            st.session_state[self.key(name)] = list(value) if field.many else value

    def set(self, name: str, value: Any) -> None:
        """Set a value (before its widget runs, or in a callback)."""
        field = self.fields[name]
        st.session_state[self.key(name)] = list(value) if field.many else value

    def keep_within(self, name: str, options: Collection[Any], fallback: Any = None) -> Any:
        """Keep ``name``'s value among ``options`` before its widget runs (an advertiser gone, a
        link naming an unknown value): values outside are dropped, a single one becomes
        ``fallback``. Returns the value."""
        value = self.value(name)
        if self.fields[name].many:
            kept = [v for v in value if v in options]
            if kept != list(value):
                self.set(name, kept)
            return kept
        if value not in options:
            self.set(name, fallback)
            return fallback
        return value

    def save(self, *, omit: Collection[str] = ()) -> None:
        """Remember the values and mirror them in the URL (a default, or a name in ``omit``, is
        left out of it). Call after the widgets have run, and before any ``st.stop()``."""
        values = {name: self.value(name) for name in self.fields}
        st.session_state[self.memory_key] = values
        for name, field in self.fields.items():
            value = values[name]
            empty = value is None or value == "" or (field.many and not value)
            if name in omit or empty or _same(value, field.default, field.many):
                wanted: list[str] = []
            else:
                wanted = [str(v) for v in value] if field.many else [str(value)]
            if st.query_params.get_all(name) == wanted:
                continue
            if wanted:
                st.query_params[name] = wanted if field.many else wanted[0]
            else:
                del st.query_params[name]

    def _from_url(self) -> dict[str, Any] | None:
        """The state the URL gives, or None when it has no parameter of this page."""
        params = st.query_params
        if not any(name in params for name in self.fields):
            return None
        values: dict[str, Any] = {}
        for name, field in self.fields.items():
            texts = params.get_all(name)
            parsed = []
            for text in texts:
                try:
                    parsed.append(field.parse(text))
                except ValueError:
                    continue
            if field.many:
                values[name] = list(dict.fromkeys(parsed))
            elif parsed:
                values[name] = parsed[0]
        return values


def _same(value: Any, default: Any, many: bool) -> bool:
    return list(value) == list(default) if many else bool(value == default)
