"""Errors that map to the CLI's documented exit codes.

0 ok; 1 runtime failure (broker unreachable, delivery not confirmed, a crash); 2 bad input or
configuration (a typo, a missing file, a refused value); 3 verification failed (a tampered audit log,
a bundle or message whose signature does not verify or whose signer is not trusted); 130 interrupted
(Ctrl-C / SIGINT: the work did not finish and must not look as if it had).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INPUT = 2
EXIT_VERIFY = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C'd command

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 runtime failure, 2 bad input or configuration, "
    "3 verification failed (tampered audit log, bad signature), 130 interrupted (Ctrl-C)."
)


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


class VerificationFailed(EdgeError):
    """Something a command was asked to trust did not verify: a signature that fails, a signer that is
    not trusted, a hash chain that is broken. Distinct from bad input so scripts can tell tampering
    from a typo."""

    exit_code = EXIT_VERIFY
