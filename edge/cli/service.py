"""How a device command reaches the running service (edge.device.control), shared by `status` and
`watchlist install|status|wipe --local`."""

from __future__ import annotations

import logging

from edge.core.config import Config
from edge.core.errors import EdgeError
from edge.core.logsetup import say
from edge.device.control import ControlRequest, ControlResponse, ask, socket_path


class ServiceRefused(EdgeError):
    """The running service refused or failed the command; its exit code is the service's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def ask_service(cfg: Config, request: ControlRequest, fallback: str | None) -> ControlResponse | None:
    """The running service's answer; None when no service runs, after saying on stderr what the
    command does instead (`fallback`; None: say nothing). A refusal raises with the service's exit code."""
    path = socket_path(cfg)
    answer = ask(path, request)
    if answer is None:
        if fallback is not None:
            say(f"no lfr-edge service is running ({path} does not answer); {fallback}", logging.WARNING)
        return None
    if not answer.ok:
        raise ServiceRefused(answer.error or "the running service refused the command", answer.exit_code)
    return answer
