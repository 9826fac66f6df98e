"""`lfr-edge`: one CLI for the device and the back office.

Each command group registers its own subcommands (`register(subparsers)` in its module under
edge/cli/), so the CLI stays a thin router. Every module is project code: one that fails to import is
a bug and fails loudly; a command whose OPTIONAL extra is missing (e.g. `backoffice serve` without the
backoffice extra) imports fine and says so in one line when it is used.

Logs go to stderr (with journald priority prefixes under systemd), data and summaries to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from edge import __version__
from edge.core.errors import (
    EXIT_CODES_HELP,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNTIME,
    ConfigError,
    EdgeError,
)
from edge.core.logsetup import say, setup_logging

# Modules that define register(subparsers). Their heavy dependencies (cv2, TFLite, paho) are imported
# inside the handlers, so parsing stays fast and a device install never loads back-office code.
COMMAND_MODULES = (
    "edge.cli.config",
    "edge.cli.provision",
    "edge.cli.models",
    "edge.cli.eval",
    "edge.cli.run",
    "edge.cli.status",
    "edge.cli.keys",
    "edge.cli.backoffice",
    "edge.cli.watchlist",
    "edge.cli.alerts",
    "edge.cli.audit",
    "edge.cli.deployment",
    "edge.cli.wipe",
    "edge.cli.bench",
    "edge.cli.demo",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfr-edge",
        description="Live facial recognition appliance: on-device int8 models, encrypted watchlist, "
        "alerts only over MQTT.",
        epilog=EXIT_CODES_HELP + " Logs go to stderr, data to stdout; --json gives one JSON document.",
    )
    parser.add_argument("--version", action="version", version=f"lfr-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1].startswith("--") and argv[1] not in ("--help",):
        argv.insert(1, "pipeline")  # `bench --source FILE` is the pipeline benchmark
    if not logging.getLogger().handlers:
        # Warnings from any command reach stderr (prefixed under journald); `run` and -v raise the level.
        setup_logging("WARNING", "text")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except ConfigError as e:
        for line in e.problems:
            say(f"error: {line}")
        return EXIT_INPUT
    except EdgeError as e:
        say(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        # Whatever was under way did not finish: never report it as a success.
        say("interrupted", logging.WARNING)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a crash still ends with one readable line; the traceback goes to debug logs
        logging.getLogger("lfr_edge").debug("unhandled error", exc_info=True)
        say(f"error: {type(e).__name__}: {e}")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
