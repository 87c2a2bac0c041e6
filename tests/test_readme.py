"""The CLI reference (docs/cli.md) is generated from the commands: it must be current."""

from __future__ import annotations

from pathlib import Path

from tracetags.cli_reference import BEGIN, END, render

CLI_DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_matches_the_commands() -> None:
    text = CLI_DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), (
        "docs/cli.md CLI reference is stale: run `python -m tracetags.cli_reference` and paste it"
    )
