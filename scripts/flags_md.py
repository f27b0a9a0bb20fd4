"""Write docs/flags.md from the `acgan` parser, so the flag reference cannot drift from `--help`.

    python scripts/flags_md.py          # rewrite docs/flags.md
    python scripts/flags_md.py --check  # exit 1 if docs/flags.md is not what the parser says
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from acgan.cli import build_parser

FLAGS_MD = Path(__file__).resolve().parents[1] / "docs" / "flags.md"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag_row(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    # argparse's own expansion, so `%%` and `%(default)s` read as `--help` prints them
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    takes_value = action.nargs != 0 and action.choices is None
    value = f" {action.metavar or action.dest.upper()}" if takes_value else ""
    names = ", ".join(f"`{s}{value}`" for s in action.option_strings)
    choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
    return f"| {names} | {choices} | {_cell(text)} |"


def _command_section(title: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{title}`", "", _cell(parser.description or ""), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        heading = "options" if group.title in ("options", "optional arguments") else group.title
        lines += [f"### {_cell(heading or '')}", "", "| flag | choices | meaning |", "|---|---|---|"]
        lines += [_flag_row(a, parser) for a in actions] + [""]
    return lines


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """(title, parser) for every leaf command, depth first, in the order `--help` lists them."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prefix, parser)]
    out = []
    for name, child in subs[0].choices.items():
        out += _commands(child, f"{prefix} {name}")
    return out


def render() -> str:
    """The whole of docs/flags.md."""
    lines = ["# Flag reference", "",
             "Generated from the parser by `python scripts/flags_md.py`; a test fails when it is out of date.",
             "Defaults are in each flag's text, as `--help` prints them.", ""]
    for title, parser in _commands(build_parser(), "acgan"):
        lines += _command_section(title, parser)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    """Rewrite docs/flags.md, or with --check report whether it is current."""
    text = render()
    if "--check" in sys.argv[1:]:
        current = FLAGS_MD.read_text() if FLAGS_MD.exists() else ""
        if current != text:
            print(f"{FLAGS_MD} is out of date: run python scripts/flags_md.py", file=sys.stderr)
            return 1
        return 0
    FLAGS_MD.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
