"""The scan directory is opened safely: planted symlinks are never followed, environment errors are one line
(exit 2) naming the path and the fix, a full disk keeps every finished record, read-only scans can be read."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

import streamscan
from streamscan.results.journal import JOURNAL_NAME, LOCK_NAME, Journal
from tests.cli_helpers import invoke, one_line_error, outputs

SLUG = "tiny-llama"


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


@pytest.fixture
def reference(sharded_llama, tmp_path) -> dict[str, bytes]:
    out = tmp_path / "ref"
    assert invoke("run", sharded_llama, "--out", out, "-q", "-p", "50", "--workers", "1").exit_code == 0
    return outputs(out)


def run(model, out, *extra):
    return invoke("run", model, "--out", out, "-q", "-p", "50", "--workers", "1", *extra)


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


def test_kill_9_while_a_full_disk_stops_the_scan_then_resume_loses_nothing(tmpfs, tmp_path):
    """A real kill -9 at the moment the disk fills (the scan is failing and stopping), then free space and
    rerun: every record that was on disk is kept, counted once, and the outputs equal a clean scan's."""
    import signal
    import sys
    import time

    import torch

    from streamscan.results.spectra import load_spectra
    from tests.fixtures.synthetic import LlamaShape, write_llama

    ck = write_llama(tmp_path / "ck", LlamaShape(layers=6, hidden=384, ffn=1024, kv=128, vocab=2048))
    args = [sys.executable, "-m", "streamscan", "run", str(ck), "-q", "-p", "50", "--workers", "2", "--out"]
    ref = tmp_path / "ref"
    streamscan.scan(ck, ref, top_percent=[50], devices="cpu", cpu_workers=2)  # in this process: no torch start-up
    filler = tmpfs / "filler"
    st = os.statvfs(tmpfs)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 24 * 4096))  # room for a few spectra and records
    out = tmpfs / "out"
    env = dict(os.environ, STREAMSCAN_COMMIT_RECORDS="1")  # each record on disk as it finishes
    proc = subprocess.Popen([*args, str(out)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while os.statvfs(tmpfs).f_bavail > 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    full = b"no space left on device" in err.lower()  # a write found no room (its pages may still be free)
    assert os.statvfs(tmpfs).f_bavail == 0 or full, "the disk never filled"
    assert alive or full, err  # killed while stopping, or it stopped cleanly
    kept = [json.loads(line)["name"] for line in (out / JOURNAL_NAME).read_text().splitlines()[1:] if line.strip()]
    filler.unlink()
    streamscan.scan(ck, out, top_percent=[50], devices="cpu", cpu_workers=2)
    names = [json.loads(line)["name"] for line in (out / JOURNAL_NAME).read_text().splitlines()[1:]]
    assert set(kept) <= set(names) and len(names) == len(set(names))  # nothing finished lost, nothing twice
    assert outputs(out) == outputs(ref) and outputs(ref)
    spectra, ref_spectra = load_spectra(out), load_spectra(ref)
    assert set(spectra) == set(ref_spectra) and all(torch.equal(spectra[n], ref_spectra[n]) for n in spectra)
