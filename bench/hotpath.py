"""
Where pi-server's time goes on the hot path: ``python -m bench.hotpath``.

pi-server runs under cProfile (``bench/serve.py --profile``) with the real pi and
the scripted LLM, as in ``bench/realpi.py``; a delta-mode and a full-mode client
(each decoding every event, in the bench process) have it answer 2,000-token
answers (streamed without delay, or paced with ``--delay``), then short prompts.
Prints the functions of the server process with the most time of their own and
the most time under them.
"""

import argparse
import os
import pstats
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, task

from tests.support.fakellm import Tokens
from tests.support.piagent import PiNotInstalled, locate_pi

from .realpi import SHORT_TOKENS, TOKENS, Routes, Setup


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hotpath", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument(
        "--answers", type=int, default=10, help="2,000-token answers per mode [%(default)s]"
    )
    parser.add_argument(
        "--short", type=int, default=20, help="short prompts per mode [%(default)s]"
    )
    parser.add_argument(
        "--mode",
        choices=("both", "full", "delta"),
        default="both",
        help="which clients take part [%(default)s]",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds between the tokens of the long answers (0: streamed without delay; "
        "the paced benchmark uses 0.005) [%(default)s]",
    )
    parser.add_argument("--top", type=int, default=30, help="functions listed [%(default)s]")
    parser.add_argument("--stats", help="also keep the pstats file here")
    return parser.parse_args(argv)


async def run(reactor, options: argparse.Namespace) -> None:
    pi = locate_pi()
    modes = ("full", "delta") if options.mode == "both" else (options.mode,)
    with tempfile.TemporaryDirectory(prefix="pi-server-profile-") as directory:
        work = Path(directory)
        (work / "home").mkdir()
        environ = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(work / "home")}
        statistics = options.stats or str(work / "server.pstats")
        setup = await Setup(reactor, work, pi, environ).start()
        try:
            server = await setup.start_server(profile=statistics)
            try:
                routes = await Routes(setup, server, direct=False).start()
                # A paced answer takes 10 s: no warm-up round for it.
                warmup = 0 if options.delay else 1
                await routes.rounds(Tokens(TOKENS, options.delay), options.answers, warmup, modes)
                await routes.rounds(Tokens(SHORT_TOKENS), options.short, 1, modes)
                await routes.stop()
            finally:
                await server.stop()
        finally:
            await setup.stop()
        shown = pstats.Stats(statistics, stream=sys.stdout).strip_dirs()
        print(
            f"pi-server, {options.answers} answers of {TOKENS:,} tokens "
            f"({options.delay:g} s apart) and {options.short} short prompts per mode "
            f"({', '.join(modes)})\n"
        )
        shown.sort_stats("tottime").print_stats(options.top)
        shown.sort_stats("cumulative").print_stats(options.top)


def main(argv: list[str]) -> None:
    options = arguments(argv)
    try:
        locate_pi()
    except PiNotInstalled as missing:
        sys.exit(str(missing))
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main(sys.argv[1:])
