"""The README's CLI reference is generated from the commands: it must be current."""

from __future__ import annotations

from pathlib import Path

from tracetags.cli_reference import BEGIN, END, render

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_cli_reference_matches_the_commands() -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), (
        "README CLI reference is stale: run `python -m tracetags.cli_reference` and paste it"
    )
