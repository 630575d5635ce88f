from pathlib import Path

from ambientctl.preflight import check_bpffs, kernel_version


def test_kernel_version_parses_distribution_suffixes() -> None:
    assert kernel_version("6.18.44-fc-v657") == (6, 18)
    assert kernel_version("5.10.0-28-amd64") == (5, 10)


def test_bpffs_found_only_as_a_bpf_mount(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /sys/fs/bpf tmpfs rw 0 0\n")
    assert not check_bpffs(mounts).ok
    mounts.write_text("bpf /sys/fs/bpf bpf rw,relatime 0 0\n")
    assert check_bpffs(mounts).ok
