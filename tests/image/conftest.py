"""Fixtures of the image tests: the built tree, booted under nspawn.

These tests need root, the image tools (scripts/bootstrap.sh image-tools) and
minutes of CPU, so they carry the ``image`` marker (deselected by default) and
also skip unless APPLIANCE_IMAGE_TESTS=1; ``make image-test`` sets both.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_support import OUT, REPO, Container


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.image)
            if os.environ.get("APPLIANCE_IMAGE_TESTS") != "1":
                item.add_marker(
                    pytest.mark.skip(
                        reason="set APPLIANCE_IMAGE_TESTS=1 (make image-test)"
                    )
                )


# The test variant: qemu's user network (10.0.2.0/24, forwarded connections
# come from 10.0.2.2) plays both the store LAN and the management network, and
# root's only key is one made for the test. Everything else is the NUC's build.
TEST_NET = "10.0.2.0/24"


@pytest.fixture(scope="session")
def ssh_key() -> Path:
    key = OUT / "test-ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test",
             "-f", str(key)],
            check=True,
            timeout=30,
        )  # fmt: skip
    return key


@pytest.fixture(scope="session")
def built(ssh_key: Path) -> Path:
    """Build the test variant once per session (IMAGE_REUSE=1: keep the last)."""
    if os.geteuid() != 0:
        pytest.skip("image tests need root (debootstrap, nspawn, mkfs)")
    if os.environ.get("IMAGE_REUSE") == "1" and (OUT / "appliance.raw").exists():
        return OUT
    env = {
        **os.environ,
        "IMAGE_OUT": str(OUT),
        "IMAGE_AUTHORIZED_KEYS": ssh_key.with_suffix(".pub").read_text(),
        "IMAGE_MGMT_NET": TEST_NET,
        "IMAGE_STORE_NET": TEST_NET,
    }
    subprocess.run(
        [str(REPO / "image" / "build.sh"), "all"], check=True, timeout=2400, env=env
    )
    return OUT


@pytest.fixture(scope="session")
def tree(built: Path) -> Path:
    """The image's root tree (what the disk's root partition holds)."""
    return built / "tree"


@pytest.fixture(scope="session")
def disk(built: Path) -> Path:
    """The signed disk image (appliance-unsigned.raw beside it)."""
    return built / "appliance.raw"


@pytest.fixture(scope="module")
def container(tree: Path) -> Iterator[Container]:
    """The tree booted with systemd as PID 1; writes go to a throwaway overlay."""
    box = Container(tree, OUT / "nspawn.log")
    box.boot()
    try:
        yield box
    finally:
        box.poweroff()
