"""Start JupyterLab on a folder. `make lab` and the browser test (tests/browser/) both start it through here.

    python scripts/lab.py [DIR] [--ip IP] [--port PORT] [--no-browser] [--token TOKEN] [JUPYTER-LAB-ARGS ...]

- binds to --ip (default 127.0.0.1, this machine only) on --port (0, or a port in use: a free one), with
  a random token unless one is given, and prints the URL to open as the FIRST line of stdout;
- adds --allow-root when run as root (containers, CI), which JupyterLab otherwise refuses with
  "Running as root is not recommended";
- drops MPLBACKEND=Agg (the Makefile and .ci/run export it for headless runs): a kernel that inherits it
  draws no figure inline, and every explorer would stay blank;
- then replaces itself with `jupyter lab` (same process id: stopping this process stops the server).
Arguments it does not know (e.g. --LabApp.user_settings_dir=...) go to `jupyter lab` unchanged.
Standard library only, so it runs before (and without) the package.
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys


def port_is_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def free_port(ip: str) -> int:
    """A port the OS reports free now (another process could take it before the server binds: rare)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(known options, the rest for `jupyter lab`)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default=".", help="the folder JupyterLab shows (its root)")
    ap.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=8888, help="0 = any free port")
    ap.add_argument("--no-browser", action="store_true", help="do not open a browser on this machine")
    ap.add_argument("--token", default=None, help="default: a random one")
    return ap.parse_known_args(argv)


def command(args: argparse.Namespace, extra: list[str]) -> tuple[list[str], str]:
    """(the `jupyter lab` argv, the URL to open) for parsed `args`; picks the port and token."""
    port = args.port if args.port and port_is_free(args.ip, args.port) else free_port(args.ip)
    if args.port and port != args.port:
        print(f"port {args.port} is in use; using {port}", file=sys.stderr)
    token = args.token or secrets.token_hex(24)
    argv = [sys.executable, "-m", "jupyterlab", args.dir,
            f"--ip={args.ip}", f"--port={port}", "--ServerApp.port_retries=0",  # fail, never drift from the URL
            f"--IdentityProvider.token={token}"]
    if args.no_browser:
        argv.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    host = "127.0.0.1" if args.ip in ("0.0.0.0", "") else args.ip   # 0.0.0.0 listens everywhere, local included
    return argv + extra, f"http://{host}:{port}/lab?token={token}"


def child_env(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without MPLBACKEND=Agg (headless); any other backend someone chose is kept."""
    return {k: v for k, v in environ.items() if not (k == "MPLBACKEND" and v.lower() == "agg")}


def main(argv: list[str] | None = None) -> None:
    cmd, url = command(*parse(argv))
    print(f"JupyterLab: {url}", flush=True)
    os.execve(cmd[0], cmd, child_env(dict(os.environ)))


if __name__ == "__main__":
    main()
