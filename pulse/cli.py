"""`kata-pulse`: run the agent (default), its embedded demo, or the terminal live view."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence

import trio

from pulse import __version__
from pulse.config import Config, ConfigError, add_agent_arguments, build_config
from pulse.logs import configure, get_logger
from pulse.malloc import tune_malloc

log = get_logger("main")

EXIT_USAGE = 2
OPEN_FILES_WHEN_UNLIMITED = 1 << 20


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kata-pulse",
        description="Kata Containers guest metrics as cAdvisor-compatible Prometheus metrics.",
        epilog="Run `kata-pulse demo` to see it work on simulated sandboxes.",
    )
    parser.add_argument("--version", action="version", version=f"kata-pulse {__version__}")
    add_agent_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the agent (the default)")
    add_agent_arguments(run, subcommand=True)
    demo = commands.add_parser(
        "demo", help="run the agent against simulated sandboxes and a simulated CRI"
    )
    add_agent_arguments(demo, subcommand=True)
    demo.add_argument("--sandboxes", type=int, default=8, help="simulated sandboxes (default 8)")
    demo.add_argument(
        "--churn-secs",
        type=float,
        default=20.0,
        help="seconds between a sandbox going away and a new one coming (0: no churn)",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed of the simulation")
    top = commands.add_parser("top", help="live terminal view of a running agent")
    top.add_argument("--url", default="http://127.0.0.1:8090", help="the agent's base URL")
    top.add_argument(
        "--sort", default="cpu", choices=("cpu", "memory", "pod", "namespace", "net"), help="sort"
    )
    return parser


async def run_until_signal(main: Callable[[], Awaitable[None]], shutdown_timeout: float) -> None:
    """Run `main` until it returns or SIGTERM/SIGINT arrives, then cancel everything."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def run_main() -> None:
                await main()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_main)
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                _exit_anyway_after(shutdown_timeout)
                # Every actor is cancelled through the nursery.
                nursery.cancel_scope.cancel()
                break


def _exit_anyway_after(seconds: float) -> None:
    """Keep the shutdown bound even if a task cannot be cancelled in time.

    Hypercorn shields its socket writes from cancellation, so a client that stopped reading
    could otherwise hold the process until the kernel gives up on it.
    """

    def force() -> None:
        log.warning("forced exit: shutdown did not finish in time", seconds=seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def raise_open_files_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard one; (soft before, soft now).

    Every collector keeps a connection to its shim, so the agent needs a descriptor per
    sandbox plus its own. Runtimes no longer raise the limit for their pods (containerd 2 and
    CRI-O dropped LimitNOFILE), which leaves the soft limit at 1024 (Go programs lift it
    themselves since Go 1.19; Python does not).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    wanted = OPEN_FILES_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft >= wanted:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError) as err:
        log.warning("cannot raise the open files limit", soft=soft, hard=hard, error=str(err))
        return soft, soft
    log.debug("open files limit raised", soft=soft, now=wanted)
    return soft, wanted


def freeze_startup_objects() -> int:
    """Exempt everything made so far (modules, classes, functions: about 60,000 objects) from
    the cyclic garbage collector's full passes; how many objects that was.

    Why: they live as long as the process, yet a full pass walks them all. At 500 sandboxes
    those passes held the event loop for 15 to 40 ms each, several times a minute, and every
    response in flight waited that long; frozen, they take half the time.
    """
    gc.collect()  # what is garbage already should not be kept forever
    gc.freeze()
    return gc.get_freeze_count()


def _config_or_exit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    try:
        return build_config(args, os.environ)
    except ConfigError as err:
        parser.exit(EXIT_USAGE, f"kata-pulse: error: {err}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "top":
        from pulse.top import run_top

        return run_top(args.url, args.sort)

    config = _config_or_exit(args, parser)
    configure(config.log_level, config.log_json)
    raise_open_files_limit()
    malloc_tuned = tune_malloc()
    if args.command == "demo":
        from pulse.sim.demo import run_demo

        if args.sandboxes < 0:
            parser.exit(EXIT_USAGE, "kata-pulse: error: --sandboxes: must be >= 0\n")

        async def demo() -> None:
            await run_demo(config, args.sandboxes, args.churn_secs, args.seed)

        freeze_startup_objects()
        trio.run(run_until_signal, demo, config.shutdown_timeout)
        return 0

    from pulse.agent import run_agent

    async def agent() -> None:
        await run_agent(config, trim_memory=malloc_tuned)

    freeze_startup_objects()
    try:
        trio.run(run_until_signal, agent, config.shutdown_timeout)
    except OSError as err:
        print(f"kata-pulse: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
