"""The documentation is part of the product: its flag reference is generated, and its links resolve."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _flags_md():
    spec = importlib.util.spec_from_file_location("flags_md", ROOT / "scripts" / "flags_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flag_reference_is_what_the_parser_says():
    text = (ROOT / "docs" / "flags.md").read_text()
    assert text == _flags_md().render(), "docs/flags.md is stale: run python scripts/flags_md.py"


def test_flag_reference_lists_every_train_flag():
    from acgan.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = (ROOT / "docs" / "flags.md").read_text()
    flags = [s for a in train._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert len(flags) > 30
    assert all(f"`{f}" in text for f in flags)


def test_flag_reference_reads_as_help_prints_it():
    # help strings escape % for argparse; the page must show what a user sees in --help, not the escapes
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", default=7, help="about 91%% at %(default)s")
    (action,) = [a for a in parser._actions if a.dest == "rate"]
    assert _flags_md()._flag_row(action, parser) == "| `--rate RATE` |  | about 91% at 7 |"


def test_flag_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    module = _flags_md()
    stale = tmp_path / "flags.md"
    stale.write_text("# Flag reference\n")
    monkeypatch.setattr(module, "FLAGS_MD", stale)
    monkeypatch.setattr("sys.argv", ["flags_md.py", "--check"])
    assert module.main() == 1
    assert "out of date" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["flags_md.py"])
    assert module.main() == 0 and stale.read_text() == module.render()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_resolves(page):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())]
    local = [t for t in targets if t and not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; the long material belongs in docs/"


def _readme_commands() -> list[str]:
    """Every acgan command line in the README's bash blocks (after `&&`, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            words = part.split()
            if "acgan" in words:
                commands.append(" ".join(words[words.index("acgan"):]))
    return commands


def test_every_readme_command_is_one_the_parser_accepts():
    import shlex

    from acgan.cli import build_parser

    commands = _readme_commands()
    assert len(commands) >= 10 and any(c.startswith("acgan train --dataset shapes") for c in commands)
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"the README's command does not parse: {command}")


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1, f"the README should give one test command, found {commands}"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[0] in ci, f"the README's test command {commands[0]!r} is not a line of .ci/run"
