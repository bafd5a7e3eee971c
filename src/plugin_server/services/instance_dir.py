"""A folder of this server's own under a shared one, so that servers started from one checkout (one
PLUGIN_SERVER_DATA_DIR) never remove or overwrite each other's runtime files.

Each server's folder is named by its supervisor's pid. A server removes only its own folder, and the
folders of servers that are gone (no process has that pid any more), never another running server's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def instance_dir(parent: Path) -> Path:
    """An empty folder `parent/<this process's pid>`, after removing the folders there whose process is
    gone. Raises OSError when it cannot be made."""
    parent.mkdir(parents=True, exist_ok=True)
    for folder in parent.iterdir():
        if folder.name.isdigit() and folder.is_dir() and not pid_alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
    own = parent / str(os.getpid())
    shutil.rmtree(own, ignore_errors=True)  # left by an earlier process that had this pid
    own.mkdir()
    return own


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (on this machine), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # not a pid at all
        return False
    return True
