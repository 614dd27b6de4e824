"""The Python that runs Corral's own code inside a sandbox (the relay, the reference agent).

It is this process's own interpreter, wherever it is installed (a pyenv build under
``/root``, a virtualenv in a private home): the sandbox binds its installation (its
``lib/``, with ``libpython`` and the standard library), the virtualenv, and Corral's
package read-only at the same paths, and ``reveal`` lets the run's uid reach them
however private the folders above them are. Corral's package and its dependencies are
put on ``sys.path`` by the command line itself, so ``PYTHONPATH`` never leaks into the
agent's own commands (``python -m pytest`` in the workspace sees the workspace, not
Corral).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import corral


@dataclass(frozen=True, slots=True)
class Runtime:
    python: str
    paths: tuple[str, ...]
    prefixes: tuple[str, ...] = ()  # installations the interpreter needs (stdlib, libpython)

    def module(self, name: str) -> list[str]:
        """The command line that runs ``python -m name`` with Corral importable."""
        code = (
            f"import sys, runpy; sys.path[:0] = {list(self.paths)!r}; "
            f"runpy.run_module({name!r}, run_name='__main__', alter_sys=True)"
        )
        return [self.python, "-c", code]

    @property
    def read_only(self) -> list[Path]:
        """What the sandbox must bind for this runtime (beyond ``/usr``)."""
        return [Path(p) for p in dict.fromkeys((*self.paths, *self.prefixes))]


def find() -> Runtime:
    """This interpreter (links resolved) and the paths Corral's code needs inside."""
    package_root = str(Path(corral.__file__).resolve().parents[1])
    site = sysconfig.get_paths()
    paths = tuple(dict.fromkeys(_real(p) for p in (package_root, site["purelib"], site["platlib"])))
    python = _real(sys.executable)
    # an interpreter installed under /usr needs nothing more: the sandbox binds /usr
    installs = (_real(p) for p in (sys.prefix, sys.base_prefix))
    prefixes = tuple(dict.fromkeys(p for p in installs if not Path(p).is_relative_to("/usr")))
    return Runtime(python, paths, prefixes)


def _real(path: str) -> str:
    return os.path.realpath(path)
