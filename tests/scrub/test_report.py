"""The scrub report: what a public entry keeps of it (never a value, hash or size), the
restore notice made from it, and a hostile [scrub] table refused."""

from __future__ import annotations

import pytest

from vml.entry import EntryInfo
from vml.errors import CorruptObject
from vml.scrub.report import DROP, DROP_LINES, REDACT, Finding, ScrubReport, mask, restore_notice


def test_the_entry_keeps_counts_paths_and_hints_only():
    report = ScrubReport([
        Finding("/home/u/.ssh/id_rsa", DROP, "ssh-user-key", "ssh"),
        Finding("/etc/shadow", REDACT, "shadow", "accounts", (1, 2)),
        Finding("/home/u/.bash_history", DROP_LINES, "shell-history", "history", (4,), "my…(9)", True, "hmac-sha256:ab"),
    ])
    table = report.to_entry()
    assert table["categories"] == {"accounts": {"files_changed": 1, "lines": 2}, "history": {"files_changed": 1, "lines": 1},
                                   "ssh": {"files_dropped": 1}}
    assert table["dropped"] == ["/home/u/.ssh/id_rsa"] and table["changed"] == ["/etc/shadow", "/home/u/.bash_history"]
    assert "my…" not in repr(table) and "hmac" not in repr(table)
    notice = restore_notice(table)
    assert any("ssh-keygen" in line for line in notice) and any("passwd" in line for line in notice)
    assert notice[-1] == "left out of this public entry: /home/u/.ssh/id_rsa"
    assert restore_notice(None) == []


def test_a_masked_preview_shows_kind_and_length_only():
    assert mask(b"ghp_0123456789") == "gh…(14)"
    assert mask(b"\xff\xfeabc") == "…(5)"


@pytest.mark.parametrize("table", ['dropped = "x"', "dropped = [1, 2]", 'hints = {a = "b"}'])
def test_a_hostile_scrub_table_is_a_damaged_entry(table: str):
    info = EntryInfo("00" * 32, "a", "dir", "", "", "m", "v", 0, 0, 0, 0, scrub={"public": True})
    data = info.to_toml().replace(b"[scrub]\npublic = true", b"[scrub]\npublic = true\n" + table.encode())
    with pytest.raises(CorruptObject, match=r"\[scrub\]"):
        EntryInfo.from_toml(data)
