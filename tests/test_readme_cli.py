"""The README's CLI table is the list of commands a user reads: every command and subcommand it
names exists and shows its --help, every command of the CLI is in the table, and every `atlas …`
line the README shows (tables, inline code, shell blocks) names real commands and options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from atlas.app.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
WORD = re.compile(r"^[a-z][a-z0-9-]*$")  # a command name; NAME, SRC, … are placeholders, files have dots


def _section(title: str) -> str:
    text = README.read_text()
    assert f"\n## {title}\n" in text, f"README has no '## {title}' section"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _command_lines(span: str) -> list[list[str]]:
    """The command lines one code span stands for, as words after ``atlas``:
    ``atlas db upgrade \\| status`` → [[db, upgrade], [db, status]] (a ``|`` swaps the last word)."""
    parts = [p.strip() for p in span.replace("\\|", "|").split("|")]
    head = parts[0].split()
    assert head[0] == "atlas", span
    lines = [head[1:]]
    for alternative in parts[1:]:
        lines.append(head[1:-1] + alternative.split())
    return lines


def _split(words: list[str]) -> tuple[list[str], list[str]]:
    """(command path, options) of the words after ``atlas``: the path is the leading command names."""
    words = [w for w in words if w not in ("--debug",)]  # the group's own option may come first
    path = []
    for w in words:
        if not WORD.match(w):
            break
        path.append(w)
    return path, [w.split("=")[0] for w in words[len(path):] if w.startswith("-")]


def _resolve(path: list[str]) -> click.Command:
    command: click.Command = main
    for depth, name in enumerate(path):
        assert isinstance(command, click.Group), f"`atlas {' '.join(path[:depth])}` has no subcommands, README says {path}"
        assert name in command.commands, f"README names `atlas {' '.join(path[:depth + 1])}`, which the CLI does not have"
        command = command.commands[name]
    return command


def _leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = set()
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            out |= _leaves(command, (*prefix, name))
        else:
            out.add((*prefix, name))
    return out


def _table_commands() -> list[tuple[list[str], list[str]]]:
    """(path, options) of every command line in the first column of the README's CLI table."""
    rows = [line for line in _section("CLI").splitlines() if line.startswith("| `atlas")]
    found = []
    for row in rows:
        first_cell = re.split(r"(?<!\\)\|", row)[1]
        for span in re.findall(r"`([^`]+)`", first_cell):
            found += [_split(words) for words in _command_lines(span)]
    return found


def test_every_command_in_the_readme_table_exists_and_shows_help():
    listed = _table_commands()
    assert len(listed) >= 10, "the README's CLI table was not found or not parsed"
    runner = CliRunner()
    for path, options in listed:
        command = _resolve(path)
        assert not isinstance(command, click.Group), f"README lists the group `atlas {' '.join(path)}`, not a command"
        result = runner.invoke(main, [*path, "--help"], prog_name="atlas")
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: atlas {' '.join(path)}" in result.output
        shown = " ".join(result.output.split())
        assert command.help and " ".join(command.help.split("\n")[0].split()) in shown  # says what it does
        for option in options:
            assert option in result.output, f"README shows `atlas {' '.join(path)} {option}`, its --help has no {option}"


def test_every_cli_command_is_in_the_readme_table():
    listed = {tuple(path) for path, _ in _table_commands()}
    missing = _leaves(main) - listed
    assert not missing, f"commands missing from the README's CLI table: {sorted(' '.join(m) for m in missing)}"


def _shell_lines(text: str) -> list[str]:
    """The lines of the README's shell code blocks (```bash, ```sh or unlabelled)."""
    lines, language = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language in ("bash", "sh", ""):
            lines.append(line.strip())
    return lines


def test_every_atlas_command_line_in_the_readme_is_real():
    text = README.read_text()
    spans = re.findall(r"`(atlas [^`]+)`", text)  # inline code, table cells included
    spans += [m for line in _shell_lines(text) for m in re.findall(r"(?:^|\$\()(atlas [^)#]+)", line)]
    checked = 0
    for span in spans:
        for words in _command_lines(span):
            path, options = _split(words)
            if not path:  # `atlas --help`, `atlas COMMAND --help`, `atlas --debug …`
                continue
            command = _resolve(path)
            names = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
            for option in options:
                assert option in names, f"README shows `{span}`: `atlas {' '.join(path)}` has no option {option}"
            checked += 1
    assert checked >= 20


def test_the_installed_command_shows_help_with_its_configuration():
    """What a user types first, through the installed entry point."""
    atlas = Path(sys.executable).with_name("atlas")
    if not atlas.exists():
        pytest.fail(f"no `atlas` entry point next to {sys.executable} — install the package (make setup)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    result = subprocess.run([str(atlas), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: atlas")
    assert "ATLAS_DATABASE_URL" in result.stdout and "ATLAS_HOME" in result.stdout
