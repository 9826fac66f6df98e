"""`lfr-edge check-config`: validate a configuration file without starting anything."""

from __future__ import annotations

import argparse
import sys

from edge.config import config_path, load_config
from edge.errors import EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check-config", help="validate a configuration file: prints OK or every error (exit 2)")
    p.add_argument("--config", help="config file (default: $LFR_EDGE_CONFIG or /etc/lfr-edge/lfr-edge.yaml)")
    p.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from edge.watchlist.policy import policy_for, warnings_for

    path = config_path(args.config)
    cfg = load_config(path)  # ConfigError → every problem printed by the CLI, exit 2
    # The threshold is checked against the embedder's calibration as `run` checks it.
    policy = policy_for(cfg)
    for w in warnings_for(policy, policy.scoring.reference_list_size):
        print(f"warning: {w}", file=sys.stderr)
    print(f"OK: {path}")
    sys.stdout.flush()
    return EXIT_OK
