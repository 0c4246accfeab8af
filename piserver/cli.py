"""
``pi-server``: runs the service in the foreground, as ``twistd -n piserver`` does;
``pi-server token ...`` manages device tokens (see tokencli.py); ``pi-server session
export ...`` takes a session back to pi in a terminal (see sessioncli.py); ``pi-server
audit`` reads the audit log (auditcli.py).
"""

import os
import sys
import time

from twisted.scripts.twistd import run as run_twistd


def main(argv=None) -> int | None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        from piserver.tokencli import run

        return run(args[1:], os.environ, time.time, sys.stdout, sys.stderr)
    if args[:1] == ["session"]:
        from piserver.sessioncli import run

        return run(args[1:], os.environ, time.time, sys.stdout, sys.stderr)
    if args[:1] == ["audit"]:
        from piserver.auditcli import run

        return run(args[1:], os.environ, time.time, sys.stdout, sys.stderr)
    # twistd's own logging to stdout, no daemon, no pidfile: a foreground program.
    sys.argv = ["pi-server", "--nodaemon", "--pidfile=", "piserver", *args]
    run_twistd()


if __name__ == "__main__":
    sys.exit(main())
