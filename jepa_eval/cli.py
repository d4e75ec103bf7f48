"""The ``jepa-eval`` command. Each sub-command is a plug-in module in ``jepa_eval/commands`` that
defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this file never names them."""
from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from . import __version__
from .errors import UserError, write_error
from .log import setup_cli_logging

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def _commands() -> dict[str, object]:
    from . import commands
    found = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            mod = importlib.import_module(f"{commands.__name__}.{info.name}")
            found[getattr(mod, "NAME", info.name.replace("_", "-"))] = mod
    return found


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user mistake
        self.exit(2, f"jepa-eval: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jepa-eval", description="Pretrain, evaluate and analyse JEPA checkpoints.")
    parser.add_argument("--version", action="version", version=f"jepa-eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, mod in _commands().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    # errors raised inside DataLoader workers arrive wrapped with a traceback: keep the message
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging()    # the library logs; the command line shows INFO and above as stderr lines
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"jepa-eval: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jepa-eval: interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130
    except OSError as e:
        # a write the command's own handlers did not name (disk full, quota, permission, read-only):
        # still one line with the path and the free space; writers rename temporary files into place
        if e.errno in WRITE_ERRNOS:
            print(f"jepa-eval: error: {_one_line(write_error(e.filename or '.', e))}", file=sys.stderr)
            return 2
        raise
    except RuntimeError as e:
        if "UserError" in str(e) and "Original Traceback" in str(e):
            print(f"jepa-eval: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
