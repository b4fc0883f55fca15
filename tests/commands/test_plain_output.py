"""Into a pipe vml prints without loading rich: its own markup escaping and plain text must be
exactly what rich would make of the same markup."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.markup import escape as rich_escape

from vml.render import escape, plain_text

TEXT = st.text(alphabet=st.sampled_from(list("ab /#@:[]\\\\xyz=é猫\n\r\x1b\x07")) | st.characters(blacklist_characters="\t"),
               max_size=30)


def rich_plain(markup: str) -> str:
    console = Console(file=io.StringIO(), force_terminal=False, color_system=None, highlight=False, soft_wrap=True, emoji=False)
    console.print(markup)
    return console.file.getvalue()[:-1]


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_escape_is_richs(text):
    assert escape(text) == rich_escape(text)


@settings(max_examples=500, deadline=None)
@given(TEXT, TEXT, TEXT)
def test_plain_text_is_what_rich_prints(before, inside, after):
    for markup in (escape(before), f"{escape(before)}[bold]{escape(inside)}[/]{escape(after)}",
                   f"[yellow]vml: warning:[/] {escape(before)}", f"[bold red]{escape(before)}[/][dim]{escape(after)}[/dim]"):
        assert plain_text(markup) == rich_plain(markup), markup
