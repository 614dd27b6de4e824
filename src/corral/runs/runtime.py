"""The Python that runs Corral's own code inside a sandbox (the relay, the reference agent).

The sandbox binds only what it must, and bubblewrap (running as the run's
unprivileged uid) can only bind paths that uid can reach. A virtualenv's
interpreter is often a link into a folder it cannot (``/root/.pyenv``), so the
interpreter is the first of this one and the system's ``/usr/bin/python3.X``
of the same minor version (compiled extensions must match) that the uid can
reach; Corral's package and its dependencies are put on ``sys.path`` by the
command line itself, so ``PYTHONPATH`` never leaks into the agent's own
commands (``python -m pytest`` in the workspace sees the workspace, not Corral).
"""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import corral
from corral.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Runtime:
    python: str
    paths: tuple[str, ...]

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
        own = [Path(p) for p in self.paths]
        if not self.python.startswith("/usr/"):
            own.append(Path(sys.prefix))
            own.append(Path(sys.base_prefix))
        return own


def reachable(path: Path, uid: int) -> bool:
    """Whether ``uid`` (not root) may traverse to ``path`` and read it (by other/owner bits)."""
    try:
        real = path.resolve(strict=True)
    except OSError:
        return False
    for folder in (*reversed(real.parents), real):
        info = folder.stat()
        need = stat.S_IXOTH if folder != real or folder.is_dir() else stat.S_IROTH
        owner_need = stat.S_IXUSR if need == stat.S_IXOTH else stat.S_IRUSR
        if not (info.st_mode & need or (info.st_uid == uid and info.st_mode & owner_need)):
            return False
    return True


def find(uid: int) -> Runtime:
    """The interpreter and paths for Corral's code inside a sandbox run as ``uid``."""
    package_root = str(Path(corral.__file__).resolve().parents[1])
    paths = tuple(
        dict.fromkeys(
            [package_root, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        )
    )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}"):
        if os.path.exists(candidate) and (uid == 0 or reachable(Path(candidate), uid)):
            unreachable = [p for p in paths if uid != 0 and not reachable(Path(p), uid)]
            if unreachable:
                break
            return Runtime(str(Path(candidate).resolve()), paths)
    raise ConfigError(
        f"no Python {version} the run's uid {uid} can reach for Corral's code inside the "
        f"sandbox: {sys.executable} (and its packages) sit in folders it cannot enter, and "
        f"/usr/bin/python{version} is missing; install python{version} from the system's "
        "packages or put Corral's virtualenv under a folder others may traverse"
    )
