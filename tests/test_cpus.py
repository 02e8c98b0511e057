"""The cores a run may use: CPU affinity capped by a container's cgroup CPU quota, read from
cgroup trees laid out as the kernel lays them out (v1 and v2), in real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cpus import cgroup_cpu_quota, usable_cores


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, text: str) -> Path:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(text)
    return proc


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_v2_quota_of_the_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    proc = _proc(tmp_path, "0::/kubepods/pod1\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)
    assert usable_cores(root, proc) == min(_affinity(), 2)  # 1.5 cores round up to 2


def test_v2_a_parent_limit_binds_a_child_without_one(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "system.slice" / "cpu.max", "100000 100000\n")
    _write(root / "system.slice" / "ocr.service" / "cpu.max", "max 100000\n")
    proc = _proc(tmp_path, "0::/system.slice/ocr.service\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.0)
    assert usable_cores(root, proc) == 1


def test_v2_no_limit_anywhere_leaves_the_affinity(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000\n")
    proc = _proc(tmp_path, "0::/\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == _affinity()


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct"
    _write(cpu / "cpu.cfs_quota_us", "-1\n")
    _write(cpu / "cpu.cfs_period_us", "100000\n")
    _write(cpu / "docker" / "abc" / "cpu.cfs_quota_us", "50000\n")
    _write(cpu / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    proc = _proc(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(0.5)
    assert usable_cores(root, proc) == 1  # never 0


def test_v1_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    proc = _proc(tmp_path, "3:cpu:/\n2:cpuacct:/\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_a_quota_above_the_affinity_does_not_raise_it(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", f"{(_affinity() + 8) * 100000} 100000\n")
    assert usable_cores(root, _proc(tmp_path, "0::/\n")) == _affinity()


@pytest.mark.parametrize("cpu_max", ["", "garbage", "100000 0", "100000"])
def test_unreadable_quota_files_mean_no_quota(tmp_path: Path, cpu_max: str) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", cpu_max)
    assert cgroup_cpu_quota(root, _proc(tmp_path, "0::/\n")) is None


def test_no_cgroup_file_system(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "no-such-file") is None
    assert usable_cores(tmp_path / "none", tmp_path / "no-such-file") == _affinity()


def test_this_machine_reads_without_error() -> None:
    """On the machine running the tests: a whole number of cores, at most its affinity."""
    assert 1 <= usable_cores() <= _affinity()
