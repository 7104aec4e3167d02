"""Every command's --help shows an example (README "Commands and exit codes" promises it), both programs."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest


def parsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    from treadle.cli import build_parser
    from treadle_agent.cli import build_parser as agent_parser

    return [*parsers(build_parser(), "treadle"), *parsers(agent_parser(), "treadle-agent")]


def test_there_are_as_many_commands_as_the_readme_lists() -> None:
    assert len(every_parser()) >= 25


@pytest.mark.parametrize(
    "path, parser", every_parser(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_help_shows_an_example_of_the_command_itself(
    path: str, parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    found = re.search(r"^examples?:", text, re.M)
    assert found, f"`{path} --help` shows no example"
    examples = text[found.start() :]
    assert path in examples, f"`{path} --help`: the example does not run {path}"
