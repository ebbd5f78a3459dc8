"""``views.common.plain``: text from outside, shown literally by the widgets that read Markdown."""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt

from views.common import plain

# CommonMark plus the GFM pieces Streamlit also renders (tables, strikethrough).
MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])

HOSTILE = [
    "![t](http://host/track.png)",
    '<img src="http://host/track.png">',
    "<script>alert(1)</script>",
    "**bold** _it_ `code` ~~gone~~ [link](http://host/x)",
    "# heading\n- item\n1. item\n> quote\n| a | b |\n| - | - |\n| 1 | 2 |\n***\ntext\n===",
    "Metallic $x^2$ :red[loud] :material/home: \\*not bold\\* a\\b &amp; &#42;",
    "<http://host/auto> www.host.example http://host/bare",
    "Deep Blue Pearl",
]


def rendered_text(markdown: str) -> str:
    """What a reader sees: the rendered HTML's text, tags and paragraphs removed."""
    out = MARKDOWN.render(markdown)
    assert out.startswith("<p>") and out.endswith("</p>\n"), out
    return html.unescape(out[3:-5])


@pytest.mark.parametrize("text", HOSTILE)
def test_plain_text_renders_exactly_as_written(text: str) -> None:
    out = MARKDOWN.render(plain(text))
    # One paragraph of text: no image, link, HTML, emphasis, code, heading, list or table.
    assert re.findall(r"<(\w+)", out) == ["p"], out
    assert rendered_text(plain(text)) == text


def test_our_markdown_around_a_plain_value_still_renders() -> None:
    out = MARKDOWN.render(f"**Color:** {plain('![t](http://host/track.png)')}")
    assert out == "<p><strong>Color:</strong> ![t](http://host/track.png)</p>\n"


def test_plain_leaves_words_alone_and_takes_any_value() -> None:
    assert plain("Sunrise Motors") == "Sunrise Motors"
    assert plain(None) == "None"
    assert plain(42) == "42"
    assert plain("a.b-c") == r"a\.b\-c"
