"""`lfr-edge`: one CLI for the device and the back office.

Each capability registers its own subcommands (`register(subparsers)` in its `commands` module),
so the CLI stays a thin router. Exit codes: 0 ok, 2 bad input or configuration, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from edge import __version__
from edge.core.errors import EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, ConfigError, EdgeError

# Modules that define register(subparsers). Imported lazily at parse time so that a command's heavy
# dependencies (cv2, TFLite, paho) load only when that command runs.
COMMAND_MODULES = (
    "edge.cli.config",
    "edge.cli.provision",
    "edge.cli.models",
    "edge.cli.run",
    "edge.cli.keys",
    "edge.cli.console",
    "edge.cli.watchlist",
    "edge.cli.alerts",
    "edge.cli.audit",
    "edge.cli.bench",
    "edge.cli.demo",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfr-edge",
        description="Live facial recognition appliance: on-device int8 models, encrypted watchlist, "
        "alerts only over MQTT.",
        epilog="Exit codes: 0 ok, 2 bad input or configuration, 1 runtime failure.",
    )
    parser.add_argument("--version", action="version", version=f"lfr-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # capability not present in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1].startswith("--") and argv[1] not in ("--help",):
        argv.insert(1, "pipeline")  # `bench --source FILE` is the pipeline benchmark
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INPUT
    except EdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a crash still ends with one readable line; the traceback goes to debug logs
        import logging

        logging.getLogger("lfr_edge").debug("unhandled error", exc_info=True)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
