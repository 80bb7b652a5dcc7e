"""Crash and resume for real: SIGKILL the CLI mid-scan, rerun, compare with an uninterrupted scan."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import outputs
from tests.fixtures.synthetic import LlamaShape, write_llama

JOURNAL = "streamscan.journal.jsonl"


@pytest.fixture(scope="module")
def medium_llama(tmp_path_factory) -> Path:
    # ~90 matrices, a few seconds of work on one worker: time to kill it more than once.
    return write_llama(
        tmp_path_factory.mktemp("ck") / "medium",
        LlamaShape(layers=12, hidden=384, ffn=1024, kv=128, vocab=2048),
        layers_per_shard=4,
    )


def cli(*args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamscan",
        "run",
        *map(str, args),
        "-q",
        "-p",
        "25",
        "-p",
        "50",
        "--workers",
        "1",
    ]


def journal_lines(out: Path) -> int:
    try:
        return (out / JOURNAL).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_after(args, out: Path, lines: int, timeout: float = 120) -> int:
    proc = subprocess.Popen(args)
    deadline = time.monotonic() + timeout
    while journal_lines(out) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return journal_lines(out)


@pytest.fixture(scope="module")
def reference(medium_llama, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted scan of medium_llama, and how long it took."""
    ref = tmp_path_factory.mktemp("ref") / "ref"
    start = time.monotonic()
    subprocess.run(cli(medium_llama, "--out", ref), check=True)
    return ref, time.monotonic() - start


def test_kill_9_twice_then_resume_gives_identical_outputs(medium_llama, reference, tmp_path):
    ref, _ = reference
    total = journal_lines(ref) - 1

    out = tmp_path / "killed"
    first = kill_after(cli(medium_llama, "--out", out), out, 8)
    assert 1 < first < total + 1, "the scan was not killed mid-way"
    second = kill_after(cli(medium_llama, "--out", out), out, first + 1)  # killed at its first commit
    assert first < second <= total + 1  # (under group commit the rest can land in one batch)
    subprocess.run(cli(medium_llama, "--out", out), check=True)

    assert outputs(out) == outputs(ref) and len(outputs(ref)) == 4
    names = [json.loads(line)["name"] for line in (out / JOURNAL).read_text().splitlines()[1:]]
    assert len(names) == len(set(names)) == total  # nothing lost, nothing counted twice
    from streamscan.results.spectra import load_spectra

    kept, ref_kept = load_spectra(out), load_spectra(ref)
    scored = {n for n, v in json.loads(next(out.glob("snr_results_*[!d].json")).read_text()).items() if v["snr"]}
    assert set(kept) == set(ref_kept) >= scored  # every scored matrix has its spectrum after the resume
    assert all(torch.equal(kept[n], ref_kept[n]) for n in kept)


def test_kill_9_at_random_points_under_group_commit_then_resume_gives_identical_outputs(
    medium_llama, reference, tmp_path
):
    """Records reach the disk in batches bounded by time and count: a kill loses the last batch, the resume
    redoes it. (Batches of 0.1 s here: this scan takes about a second, the default 0.5 s would make it one or
    two batches, and a kill would rarely land between them.)"""
    ref, seconds = reference
    total = journal_lines(ref) - 1
    rng = random.Random(int(os.environ.get("STREAMSCAN_KILL_SEED", "13")))
    out = tmp_path / "killed"
    env = dict(os.environ, STREAMSCAN_COMMIT_SECONDS="0.1")
    seen = []
    for _ in range(3):
        proc = subprocess.Popen(cli(medium_llama, "--out", out), env=env)
        deadline = time.monotonic() + 120
        while journal_lines(out) <= (seen[-1] if seen else 0) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # the header (or the previous run's records): the scan is under way
        time.sleep(rng.uniform(0, seconds / 4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(journal_lines(out))
    assert any(1 < n < total + 1 for n in seen), f"no kill landed mid-scan: {seen} lines of {total + 1}"
    subprocess.run(cli(medium_llama, "--out", out), check=True)

    assert outputs(out) == outputs(ref) and len(outputs(ref)) == 4
    names = [json.loads(line)["name"] for line in (out / JOURNAL).read_text().splitlines()[1:]]
    assert len(names) == len(set(names)) == total  # a lost batch is recomputed once, never counted twice


def test_torn_write_at_the_moment_of_the_kill_is_tolerated(medium_llama, tmp_path):
    out = tmp_path / "torn"
    kill_after(cli(medium_llama, "--out", out, "--include", "*self_attn*"), out, 5)
    with open(out / JOURNAL, "ab") as fh:
        fh.write(b'{"name":"model.layers.1.self_attn.q_proj","type":"self_')
    subprocess.run(cli(medium_llama, "--out", out, "--include", "*self_attn*"), check=True)
    data = json.loads(next(out.glob("snr_results_medium.json")).read_text())
    assert len(data) == 48 and all(v["snr"] is not None for v in data.values())


def test_concurrent_scan_on_the_same_dir_is_refused(medium_llama, tmp_path):
    from streamscan.records import Fingerprint, ScanHeader
    from streamscan.results.journal import Journal

    out = tmp_path / "busy"
    with Journal(
        out, ScanHeader("test", Fingerprint("other", (), "gram64"), "other", "other", ())
    ):  # another process holds the directory
        second = subprocess.run(cli(medium_llama, "--out", out), capture_output=True, text=True)
    assert second.returncode == 2
    assert f"another scan (pid {os.getpid()})" in second.stderr and second.stderr.count("\n") == 1


def stop_after(args, out: Path, lines: int, sig: int, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, STREAMSCAN_COMMIT_RECORDS="1")  # each record on disk as it finishes
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    while journal_lines(out) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, "", err)


def test_sigterm_and_ctrl_c_say_how_many_are_kept_then_resume_identically(medium_llama, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(cli(medium_llama, "--out", ref), check=True)
    out = tmp_path / "stopped"
    for sig, code, lines in ((signal.SIGTERM, 143, 6), (signal.SIGINT, 130, 20)):
        done = stop_after(cli(medium_llama, "--out", out), out, lines, sig)
        assert done.returncode == code, done.stderr
        kept = journal_lines(out) - 1
        assert done.stderr.strip().splitlines() == [
            f"streamscan: interrupted: {kept} results kept; rerun the same command to resume"
        ], done.stderr
    subprocess.run(cli(medium_llama, "--out", out), check=True)
    assert outputs(out) == outputs(ref)


@pytest.mark.parametrize("after", [0.4, 0.9])
def test_ctrl_c_during_start_up_is_one_line(medium_llama, tmp_path, after):
    proc = subprocess.Popen(cli(medium_llama, "--out", tmp_path / "o"), stderr=subprocess.PIPE, text=True)
    time.sleep(after)  # importing streamscan or torch, reading headers
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("streamscan: interrupted: ") and line.endswith(
        " results kept; rerun the same command to resume"
    )
