"""One checkpoint, every way to scan it: byte-identical results JSON, sorted JSON, YAMLs and kept spectra
(single process with 1 or 2 CPU workers under load, --shard 0/2 + 1/2 + merge, kill -9 then resume, a
torchrun world of 2). docs/reproducibility.md states what is promised."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import streamscan
from streamscan.results.spectra import load_spectra
from tests.cli_helpers import outputs
from tests.fixtures.synthetic import LlamaShape, write_llama

TOP = ("-p", "25", "-p", "50")


def cli(ck: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamscan", "run", str(ck), "--out", str(out), "-q", *TOP, *extra]


def same_as(out: Path, ref: Path) -> None:
    assert outputs(out) == outputs(ref)
    kept, ref_kept = load_spectra(out), load_spectra(ref)
    assert set(kept) == set(ref_kept) and kept
    assert all(torch.equal(kept[n], ref_kept[n]) for n in kept)


def journal_lines(out: Path) -> int:
    try:
        return (out / "streamscan.journal.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    """Two shards, 44 matrices: bf16, two shapes above the 512 block cut of the Gram, batchable small ones;
    and its scan by one process with one CPU worker."""
    ck = write_llama(
        tmp_path_factory.mktemp("ck") / "repro",
        LlamaShape(layers=4, hidden=512, ffn=640, kv=128, vocab=1024),
        layers_per_shard=2,
    )
    ref = tmp_path_factory.mktemp("ref") / "ref"
    streamscan.scan(ck, ref, devices="cpu", cpu_workers=1, top_percent=[25, 50])
    assert len(outputs(ref)) == 4  # results, sorted, two YAMLs
    return ck, ref


def test_two_workers_under_load_equal_one_worker(model, tmp_path):
    ck, ref = model
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy core: load must not matter
    try:
        streamscan.scan(ck, tmp_path / "w2", devices="cpu", cpu_workers=2, top_percent=[25, 50])
    finally:
        hog.kill()
        hog.wait()
    same_as(tmp_path / "w2", ref)


def test_shards_then_merge_equal_one_process(model, tmp_path):
    ck, ref = model
    out = tmp_path / "sharded"
    for shard, workers in (("0/2", 2), ("1/2", 1)):  # in this process: the CLI's --shard is tested elsewhere
        streamscan.scan(ck, out, devices="cpu", cpu_workers=workers, shard=shard)
    streamscan.merge(out, [25, 50])
    same_as(out, ref)


def test_kill_9_then_resume_with_other_workers_equals_one_process(model, tmp_path):
    ck, ref = model
    out = tmp_path / "killed"
    env = dict(os.environ, STREAMSCAN_COMMIT_RECORDS="1")  # each record on disk as it finishes
    proc = subprocess.Popen(cli(ck, out, "--workers", "2"), env=env)
    deadline = time.monotonic() + 120
    while journal_lines(out) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = journal_lines(out)
    assert 1 < kept < 45, "the scan was not killed mid-way"
    subprocess.run(cli(ck, out, "--workers", "1"), check=True)
    same_as(out, ref)


@pytest.mark.slow
def test_torchrun_world_of_two_equals_one_process(model, tmp_path):
    ck, ref = model
    out = tmp_path / "dist"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    run = subprocess.run([*args, *cli(ck, out, "--workers", "2")[2:]], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    same_as(out, ref)
