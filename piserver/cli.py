"""
``pi-server``: runs the service in the foreground, as ``twistd -n piserver`` does.
"""

import sys

from twisted.scripts.twistd import run as run_twistd


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # twistd's own logging to stdout, no daemon, no pidfile: a foreground program.
    sys.argv = ["pi-server", "--nodaemon", "--pidfile=", "piserver", *args]
    run_twistd()


if __name__ == "__main__":
    main()
