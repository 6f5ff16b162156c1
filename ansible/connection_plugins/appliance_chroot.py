"""Connection to a directory tree through chroot(8): the image build's step.

ansible-core has no chroot connection (it is in community.general, which is
not installed here: Galaxy is unreachable). The image build needs only this:
run a command inside the tree (its own /usr/bin/python3, so release venvs get
the paths they will have on the NUC) and copy files in and out. Needs root on
the controller; the host is the tree's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleFileNotFound
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: appliance_chroot
short_description: run tasks inside a directory tree with chroot(8)
description:
  - Runs every command as C(chroot TREE /bin/sh -c ...) and copies files
    into and out of the tree. Used by image/build.sh to configure the image
    tree with the appliance role. Needs root on the controller.
author: store relay appliance
options:
  remote_addr:
    description: The tree's path on the controller.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""


class Connection(ConnectionBase):
    """chroot(8) into the tree named by the host."""

    transport = "appliance_chroot"
    has_pipelining = True
    has_tty = False

    def _tree(self) -> str:
        tree = os.path.abspath(str(self.get_option("remote_addr")))
        if not os.path.isfile(os.path.join(tree, "usr/bin/python3")):
            raise AnsibleConnectionFailure(f"not a tree with python3: {tree}")
        return tree

    def _connect(self) -> Connection:
        if not self._connected:
            self._tree()
            self._connected = True
        return self

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        done = subprocess.run(
            ["chroot", self._tree(), "/bin/sh", "-c", cmd],
            input=in_data,
            stdin=None if in_data is not None else subprocess.DEVNULL,
            capture_output=True,
            env=env,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def _inside(self, path: str) -> str:
        return os.path.join(self._tree(), path.lstrip("/"))

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        if not os.path.exists(in_path):
            raise AnsibleFileNotFound(f"no file to copy: {in_path}")
        shutil.copyfile(in_path, self._inside(out_path))

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        shutil.copyfile(self._inside(in_path), out_path)

    def close(self) -> None:
        self._connected = False

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.close()
