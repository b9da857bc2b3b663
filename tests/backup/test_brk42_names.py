"""Invisible characters are shown, never printed raw (breaker 42 R15): 'transcribe\\u200b'
printed as it is reads as the live database's name. No database needed."""

from __future__ import annotations

import unicodedata

import pytest
from typer.testing import CliRunner

from opsctl.output import first_control, visible


def test_every_format_character_is_escaped():
    cf = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    assert cf and all(visible(c) != c for c in cf), [hex(ord(c)) for c in cf if visible(c) == c]
    assert visible("transcribe\u200b") == "transcribe\\u200b"
    assert visible("a\u00adb\u2060c\ufeff") == "a\\xadb\\u2060c\\ufeff"
    assert visible("caf\u00e9 \u043f\u0440\u0438\u0432\u0435\u0442 \u65e5\u672c") == "caf\u00e9 \u043f\u0440\u0438\u0432\u0435\u0442 \u65e5\u672c"
    assert first_control("x\u200by") == "\u200b"


def test_names_compare_as_they_read():
    from opsctl.backup.postgres import check_replaceable, name_skeleton

    assert name_skeleton("\uff54emplate1") == name_skeleton("template1")
    assert name_skeleton("transcr\u0456be") == name_skeleton("transcribe")
    assert name_skeleton("transcribe\u200b") == name_skeleton("transcribe")
    assert name_skeleton("transcribe_copy") != name_skeleton("transcribe")
    for name in ("transcribe_copy", "scratch", "\u0431\u0430\u0437\u0430"):
        check_replaceable(name, "transcribe", "--target-db")


def test_every_single_letter_confusable_reads_as_its_letter():
    """Each character Unicode's confusables.txt draws like one ASCII letter or digit, put in
    for that letter in the live name, is refused (breaker 45 F8: U+0251 and U+0585 were not)."""
    from confusable_homoglyphs.confusables import confusables_data

    from opsctl.backup.postgres import check_replaceable
    from opsctl.errors import UsageError

    live = "abcdefghijklmnopqrstuvwxyz0123456789"
    tried = 0
    for char, homoglyphs in confusables_data.items():
        char = char.strip("\u200e")  # right-to-left characters come wrapped in marks (breaker 47 F6)
        letters = [h["c"].strip("\u200e").lower() for h in homoglyphs]
        letters = [c for c in letters if len(c) == 1 and c.isascii() and c.isalnum()]
        if len(char) != 1 or char.isascii() or not letters:
            continue
        look_alike = live.replace(letters[0], char, 1)
        with pytest.raises(UsageError, match="reads as|only by case"):
            check_replaceable(look_alike, live, "--target-db")
        tried += 1
    assert tried > 1000


@pytest.mark.parametrize("name, live", [
    ("p\u0665stgres", "postgres"), ("template\u0661", "template1"), ("temp\u05c0ate1", "template1"),  # RTL digits, letters
    ("ternplate1", "template1"), ("ternplate0", "template0"),       # 'rn' drawn as 'm'
    ("postgres\u2800", "postgres"),                                 # the blank Braille pattern
    ("postgres\u0332", "postgres"), ("postgres\u0358", "postgres"), ("postgres\u0cbc", "postgres"),  # combining marks
    ("\u1d1bemplate1", "template1"),                                # small capital T, drawn as Cyrillic te
    # breaker 48 F4: capital I for l, small capitals, a letter with a stroke, a hair space inside
    ("tempIate0", "template0"), ("p\u00f8stgres", "postgres"), ("templa\u1d1be1", "template1"),
    ("pos\u1d1bgres", "postgres"), ("postg\u0280es", "postgres"), ("template\u200a1", "template1"),
])
def test_breaker_47_look_alikes_read_as_the_name(name, live):
    from opsctl.backup.postgres import check_replaceable
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match=f"reads as {live}, a system database"):
        check_replaceable(name, "transcribe", "--target-db")


@pytest.mark.parametrize("name", ["t\u0280anscribe", "tra\u0274scribe", "transcr\u200aibe",
                                  # breaker 49 F5, F6: upper case and one more character; Latin Extended-G
                                  "TRANSCRIBE\u200b", "TRANSCRIB\u0415", "TRANSCRIB\u00c9", "transcrIbe\u200b",
                                  "TRANSCRlBE", "tran\U0001df1e\U0001df1dribe"])
def test_breaker_48_look_alikes_of_the_live_name_are_refused(name):
    from opsctl.backup.postgres import check_replaceable
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match="reads as transcribe, the environment's live database"):
        check_replaceable(name, "transcribe", "--target-db")


@pytest.mark.parametrize("name", ["\u0431\u0430\u0437\u0430", "donn\u00e9es", "\u6570\u636e", "pg_\u0442\u0435\u0441\u0442",
                                  "memo", "restore_drill", "transcribe_copy", "Ivan_copy", "INVENTORY"])
def test_names_that_read_as_no_other_are_taken(name):
    from opsctl.backup.postgres import check_replaceable

    check_replaceable(name, "transcribe", "--target-db")


def test_an_invisible_character_in_an_error_line_is_shown(tmp_path, monkeypatch):
    """Through the CLI's own error line (stderr console): the name as typed, escaped."""
    from opsctl.cli import app

    monkeypatch.setenv("OPSCTL_ROOT", str(tmp_path))
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {}\n")
    result = CliRunner().invoke(app, ["restore", "--env", "no\u200bsuch", "--latest", "--yes"])
    assert result.exit_code == 2
    assert "\u200b" not in result.stderr and "no\\u200bsuch" in result.stderr, result.stderr
