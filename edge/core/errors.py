"""Errors that map to the CLI's documented exit codes (0 ok, 2 bad input/config, 1 runtime failure)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INPUT = 2


class EdgeError(Exception):
    """Base: the message is one line a person can act on."""

    exit_code = EXIT_RUNTIME


class InputError(EdgeError):
    """Bad configuration, file, model or argument: names what is wrong and where."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """All configuration problems at once, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class RuntimeFailure(EdgeError):
    exit_code = EXIT_RUNTIME
