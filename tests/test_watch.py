"""--watch-config on a task.Clock: edits in place, the ConfigMap symlink swap, a file briefly missing."""

import os

from twisted.internet.task import Clock

from llmhop.watch import POLL_SECONDS, ConfigWatcher


class Mount:
    """A directory laid out as the kubelet lays out a ConfigMap volume."""

    def __init__(self, root):
        self.root = root
        self.version = 0
        self.publish('{"v": 0}')
        os.symlink("..data/config.json", os.path.join(root, "config.json"))

    @property
    def path(self):
        return os.path.join(self.root, "config.json")

    def publish(self, text):
        self.version += 1
        directory = "..%d" % (self.version,)
        os.mkdir(os.path.join(self.root, directory))
        with open(os.path.join(self.root, directory, "config.json"), "w") as f:
            f.write(text)
        # The swap is one rename of a new symlink over ..data, as the kubelet does it.
        os.symlink(directory, os.path.join(self.root, "..data_tmp"))
        os.rename(os.path.join(self.root, "..data_tmp"), os.path.join(self.root, "..data"))


def watching(path):
    clock, calls = Clock(), []
    watcher = ConfigWatcher(clock, path, lambda: calls.append(clock.seconds()))
    watcher.start()
    return clock, calls, watcher


def test_a_configmap_swap_is_one_reload(tmp_path):
    mount = Mount(str(tmp_path))
    clock, calls, watcher = watching(mount.path)
    clock.advance(POLL_SECONDS)
    assert calls == []
    # Same size, same content length: only the file behind the link changed.
    mount.publish('{"v": 1}')
    clock.advance(POLL_SECONDS)
    assert calls == [2 * POLL_SECONDS]
    clock.advance(POLL_SECONDS * 5)
    assert len(calls) == 1
    watcher.stop()
    mount.publish('{"v": 2}')
    clock.advance(POLL_SECONDS * 5)
    assert len(calls) == 1


def test_an_edit_in_place_and_a_file_briefly_missing(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    clock, calls, _ = watching(str(path))
    path.write_text('{"models": {}}')
    clock.advance(POLL_SECONDS)
    assert len(calls) == 1
    # An editor's save: unlink, then a new file renamed into place.
    path.unlink()
    clock.advance(POLL_SECONDS)
    assert len(calls) == 1
    (tmp_path / "new").write_text('{"models": {"m": 1}}')
    os.rename(tmp_path / "new", path)
    clock.advance(POLL_SECONDS)
    assert len(calls) == 2
