"""``--watch-config``: reload when the config file changes, for hosts that send no SIGHUP.

A Kubernetes ConfigMap mounted as a directory is updated by the kubelet
without a signal: it writes the new files into a fresh timestamped directory
and swaps the C{..data} symlink to it, so C{config.json} (itself a symlink
through C{..data}) names a new file with a new inode.  Inotify on the path
would watch the old inode; polling what C{stat()} (which follows symlinks)
says the path names now sees the swap as well as an edit in place.

A poll that finds no file (between an editor's unlink and rename) changes
nothing: the running config stays until a file is there again.
"""

import os
from typing import Callable, Optional

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

# Often enough to follow an edit within seconds, rarely enough to cost nothing.
POLL_SECONDS = 2.0

Identity = tuple[int, int, int, int]

_log = Logger()


def identity(path: str) -> Optional[Identity]:
    """What names the file at C{path} and its content: device, inode, size, mtime; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatcher:
    """Calls C{changed} when the file at C{path} is another file, or the same one changed."""

    def __init__(
        self, reactor: IReactorTime, path: str, changed: Callable[[], None], interval: float = POLL_SECONDS
    ) -> None:
        self.path = path
        self.changed = changed
        self.interval = interval
        self._seen = identity(path)
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def poll(self) -> None:
        now = identity(self.path)
        if now is None or now == self._seen:
            return
        self._seen = now
        _log.info("{path} changed: reloading", path=self.path)
        self.changed()
