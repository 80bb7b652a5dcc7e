"""The scan directory is opened safely: planted symlinks are never followed, environment errors are one line
(exit 2) naming the path and the fix, a full disk keeps every finished record, read-only scans can be read."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamscan.cli import main
from streamscan.results.journal import JOURNAL_NAME, LOCK_NAME, Journal

SLUG = "tiny-llama"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamscan: error:"), result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("snr_results_*"))}


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


@pytest.fixture
def reference(sharded_llama, tmp_path) -> dict[str, bytes]:
    out = tmp_path / "ref"
    assert invoke("run", sharded_llama, "--out", out, "-q", "-p", "50", "--cpu-workers", "1").exit_code == 0
    return outputs(out)


def run(model, out, *extra):
    return invoke("run", model, "--out", out, "-q", "-p", "50", "--cpu-workers", "1", *extra)


@pytest.mark.parametrize(
    "name", [f"snr_results_{SLUG}.json", f"snr_results_{SLUG}.json.tmp", "streamscan_summary.json"]
)
def test_planted_output_and_temp_symlinks_are_replaced_not_followed(sharded_llama, tmp_path, victim, name):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / name)
    assert run(sharded_llama, out).exit_code == 0
    assert victim.read_text() == "precious\n"
    assert not (out / name).is_symlink() or name.endswith(".tmp")


@pytest.mark.parametrize("name", [LOCK_NAME, JOURNAL_NAME])
@pytest.mark.parametrize("fresh", [False, True])
def test_planted_lock_or_journal_symlink_is_refused_in_one_line(sharded_llama, tmp_path, victim, name, fresh):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / name)
    one_line_error(run(sharded_llama, out, *(["--fresh"] if fresh else [])), str(out / name), "symlink")
    assert victim.read_text() == "precious\n"


def test_bad_out_paths_are_one_line_exit_2(sharded_llama, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error(run(sharded_llama, a_file), str(a_file), "is a file", "another --out")
    one_line_error(run(sharded_llama, a_file / "sub"), str(a_file / "sub"), "a parent of it is a file")
    one_line_error(run(sharded_llama, ""), "--out ''")
    assert not list(Path.cwd().glob("snr_results_*"))


def test_a_name_too_long_for_the_file_system_is_refused_before_the_scan(sharded_llama, tmp_path):
    one_line_error(run(sharded_llama, tmp_path / "o", "--name", "n" * 300), "--name", "shorter")
    assert not (tmp_path / "o" / JOURNAL_NAME).exists()


def test_disk_full_during_the_scan_keeps_every_record_and_says_rerun(sharded_llama, tmp_path, reference, monkeypatch):
    out = tmp_path / "out"
    real = Journal.append
    calls = []

    def append(self, result):
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(result.name)
        real(self, result)

    monkeypatch.setattr(Journal, "append", append)
    one_line_error(run(sharded_llama, out), "no space left on device", "free some space", "rerun")
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines[1:]] == calls
    monkeypatch.setattr(Journal, "append", real)
    assert run(sharded_llama, out).exit_code == 0
    assert outputs(out) == reference


def _mount(*args) -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped otherwise)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)):
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk_stops_cleanly_and_resumes(sharded_llama, tmpfs, reference):
    filler = tmpfs / "filler"
    st = os.statvfs(tmpfs)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 6 * 4096))  # room for the header and a few records
    out = tmpfs / "out"
    result = run(sharded_llama, out)
    one_line_error(result, "no space left on device", "rerun")
    kept = (out / JOURNAL_NAME).read_bytes()
    filler.unlink()
    assert run(sharded_llama, out).exit_code == 0
    assert (out / JOURNAL_NAME).read_bytes().startswith(kept.rsplit(b"\n", 1)[0])  # nothing finished was lost
    assert outputs(out) == reference


def test_status_and_select_on_a_read_only_scan_directory(sharded_llama, tmpfs):
    out = tmpfs / "out"
    assert run(sharded_llama, out).exit_code == 0
    if not _mount("-o", "remount,ro", str(tmpfs)):
        pytest.skip("cannot remount read-only")
    status = invoke("status", out)
    assert status.exit_code == 0 and "matrices done" in status.output, status.output
    one_line_error(invoke("select", out, "-p", "25"), str(out), "read-only")
    one_line_error(run(sharded_llama, out), str(out), "writable --out")
