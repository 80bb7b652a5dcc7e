"""Split scans: cost-balanced assignment, rank journals, --shard + merge, torchrun on gloo, dead and hung ranks."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import streamscan
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.source import resolve
from streamscan.distributed import (
    Rank,
    assign,
    from_env,
    local_devices,
    parse_shard,
    share,
)
from streamscan.errors import JournalError, UsageError
from streamscan.planning.plan import make_plan
from streamscan.records import Fingerprint, RankInfo, Result, ScanHeader
from streamscan.results.journal import (
    JOURNAL_NAME,
    Journal,
    is_locked,
    rank_journal_name,
    read_journals,
)
from streamscan.results.spectra import stored_names
from tests.cli_helpers import invoke, outputs
from tests.fixtures.synthetic import LlamaShape, write_llama

HEADER = ScanHeader(
    version="test", fingerprint=Fingerprint("m", (), "gram64"), model="m", slug="m", targets=("a", "b", "c")
)


def res(name, snr=1.0, status="ok", worker="cpu0"):
    return Result(name=name, type="t", shape=(4, 4), dtype="F32", snr=snr, status=status, worker=worker)


def journal_names(path: Path) -> list[str]:
    return [json.loads(line)["name"] for line in path.read_text().splitlines()[1:]]


# --- assignment ----------------------------------------------------------------------------------------------


def test_assignment_is_balanced_by_cost_not_count_and_deterministic(sharded_llama):
    jobs = list(make_plan(build_index(resolve(sharded_llama))).jobs)
    shares = assign(jobs, 3)
    assert sorted(j.name for s in shares for j in s) == sorted(j.name for j in jobs)  # each job exactly once
    loads = [sum(j.cost for j in s) for s in shares]
    assert max(loads) - min(loads) <= max(j.cost for j in jobs)  # the LPT bound
    counts = [len(s) for s in shares]
    assert max(counts) - min(counts) > 1  # the two big vocab matrices weigh more than many small ones
    shuffled = jobs[:]
    random.Random(1).shuffle(shuffled)
    assert [[j.name for j in s] for s in assign(shuffled, 3)] == [[j.name for j in s] for s in shares]


def test_shards_agree_whenever_they_start_while_ranks_split_what_is_missing(sharded_llama):
    jobs = list(make_plan(build_index(resolve(sharded_llama))).jobs)
    first = share(Rank(0, 2), jobs, jobs)
    missing = [j for j in jobs if j not in first]  # shard 0 finished before shard 1 started
    assert share(Rank(1, 2), missing, jobs) == share(Rank(1, 2), jobs, jobs) == missing
    ranks = [share(Rank(r, 2, coordinated=True), missing, jobs) for r in range(2)]
    assert sorted(j.name for s in ranks for j in s) == sorted(j.name for j in missing) and all(ranks)


def test_rank_from_torchrun_and_slurm_environments():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert from_env(env) == Rank(3, 8, 1, 2, coordinated=True)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2", "SLURM_TASKS_PER_NODE": "3(x2)"}
    assert from_env(slurm) is None and from_env(slurm, slurm=True) == Rank(5, 6, 2, 3, coordinated=True)
    assert parse_shard(" 1/4") == Rank(1, 4) and Rank(1, 4).tag(res("a")).worker == "shard1/cpu0"
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(UsageError, match="RANK=8"):
        from_env({"RANK": "8", "WORLD_SIZE": "8"})


def test_auto_devices_are_the_ranks_own_gpus():
    gpus = [f"cuda:{i}" for i in range(4)]
    assert [local_devices("auto", gpus, Rank(r, 8, r % 4, 4, True)) for r in range(4, 6)] == [["cuda:0"], ["cuda:1"]]
    assert local_devices("auto", gpus, Rank(1, 2, 1, 2, True)) == ["cuda:1", "cuda:3"]  # 2 ranks, 4 GPUs
    assert local_devices("auto", gpus[:1], Rank(3, 4, 3, 4, True)) == ["cuda:0"]  # more ranks than GPUs share
    assert local_devices("0,cpu", ["cuda:0", "cpu"], Rank(1, 2, 1, 2, True)) == ["cuda:0", "cpu"]  # as named
    assert local_devices("auto", ["cpu"], Rank(1, 2, 1, 2, True)) == ["cpu"]
    assert Rank(0, 4, 0, 2).cpu_workers() == max(1, __import__("psutil").cpu_count(logical=False) // 2)


# --- rank journals ---------------------------------------------------------------------------------------------


def test_rank_journals_coexist_union_and_fold_into_the_single_process_journal(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a", None, "error"))  # an earlier single-process run failed on "a"
    with (
        Journal(tmp_path, replace(HEADER, rank=RankInfo(0, 3, False, "host", 1)), rank=0) as r0,
        Journal(tmp_path, replace(HEADER, rank=RankInfo(1, 3, False, "host", 1)), rank=1) as r1,
    ):
        r0.append(res("b", 2.0, worker="rank0/cpu0"))
        r1.append(res("a", 3.0, worker="rank1/cpu0"))
        assert is_locked(tmp_path)
        with pytest.raises(JournalError, match="rank 1 pid"):
            Journal(tmp_path, HEADER)  # no single-process scan or merge while ranks write
        with pytest.raises(JournalError, match="another scan"):
            Journal(tmp_path, HEADER, rank=1)  # nor the same rank twice
        # group commit: the ranks' records reach the disk with their batch; only the earlier error is there yet
        assert {n: r.status for n, r in read_journals(tmp_path)[1].items()} == {"a": "error"}
        r0.commit()
        r1.commit()
        _, union = read_journals(tmp_path)
        assert {n: r.snr for n, r in union.items()} == {"a": 3.0, "b": 2.0}
    r1 = Journal(tmp_path, replace(HEADER, rank=RankInfo(1, 3, False, "host", 1)), rank=1)
    r1.append(res("a", None, "error"))  # a stale error never replaces a finished record
    r1.close()
    with Journal(tmp_path, HEADER) as j:  # opening the single-process journal folds the ranks in
        assert {n: r.snr for n, r in j.results.items()} == {"a": 3.0, "b": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".streamscan.lock", JOURNAL_NAME]
    assert journal_names(tmp_path / JOURNAL_NAME) == ["a", "b", "a", "a"]  # the whole history, in file order


def test_a_rank_journal_of_another_scan_is_refused(tmp_path):
    with Journal(tmp_path, replace(HEADER, fingerprint=Fingerprint("m", (), "svdvals32")), rank=2):
        pass
    with pytest.raises(JournalError, match=rank_journal_name(2) + ".*different method"):
        read_journals(tmp_path, HEADER.fingerprint)
    with pytest.raises(JournalError, match="different method"):
        Journal(tmp_path, HEADER)
    with Journal(tmp_path, HEADER, fresh=True) as j:
        assert j.results == {}
    assert not (tmp_path / rank_journal_name(2)).exists()


# --- --shard i/N + merge, without torch.distributed ------------------------------------------------------------


def test_shards_then_merge_equal_a_single_process_scan(sharded_llama, tmp_path):
    ref = streamscan.scan(sharded_llama, tmp_path / "ref", top_percent=[25, 50], cpu_workers=1)
    out = tmp_path / "sharded"
    first = invoke("run", sharded_llama, "--out", out, "--shard", "0/2", "--workers", "1")
    assert first.exit_code == 0 and "shard 0/2:" in first.output and "streamscan merge" in first.output
    assert not outputs(out)  # a shard writes only its journal
    st = streamscan.status(out)  # status and select read the union while shards are missing
    assert 0 < st["done"] < st["total"] == 30 and st["remaining"] == 30 - st["done"]
    early = invoke("merge", out)
    assert early.exit_code == 1 and "not done yet" in early.output
    assert invoke("run", sharded_llama, "--out", out, "--shard", "1/2", "--workers", "1").exit_code == 0
    merged = invoke("merge", out, "-p", 25, "-p", 50)
    assert merged.exit_code == 0 and "merged 30 of 30 matrices from 2 rank(s)" in merged.output
    assert outputs(out) == outputs(ref.out_dir) and len(outputs(out)) == 4
    names = journal_names(out / JOURNAL_NAME)
    assert len(names) == len(set(names)) == 30
    workers = {json.loads(line)["worker"].split("/")[0] for line in (out / JOURNAL_NAME).read_text().splitlines()[1:]}
    assert workers == {"shard0", "shard1"}
    assert json.loads((out / "streamscan_summary.json").read_text())["ranks"] == 2


def test_shard_option_errors_are_one_line(sharded_llama, tmp_path):
    for args, fragment in (
        (["--shard", "2/2"], "--shard 2/2"),
        (["--shard", "0/2", "--fresh"], "--fresh with --shard"),
        (["--shard", "0/2", "--distributed"], "exclude each other"),
        (["--distributed"], "no RANK/WORLD_SIZE"),
    ):
        result = invoke("run", sharded_llama, "--out", tmp_path / "x", *args)
        assert result.exit_code == 2 and fragment in result.output and len(result.output.strip().splitlines()) == 1


def test_a_world_of_one_in_process_scans_merges_and_passes_rank_0_errors_on(sharded_llama, tmp_path, monkeypatch):
    ref = streamscan.scan(sharded_llama, tmp_path / "ref", top_percent=[25], cpu_workers=1)
    for key, value in dict(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    ).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "world1"
    res = streamscan.scan(sharded_llama, out, top_percent=[25], cpu_workers=1)  # torchrun's environment: split
    assert outputs(out) == outputs(ref.out_dir) and res.summary["ranks"] == 1
    assert {r.worker for r in res.results} == {"rank0/cpu0"} and not list(out.glob("streamscan.journal.rank-*"))
    with pytest.raises(JournalError, match="different method"):  # raised on rank 0, re-raised on every rank
        streamscan.scan(sharded_llama, out, method="svdvals64", cpu_workers=1)
    plain = streamscan.scan(sharded_llama, tmp_path / "plain", cpu_workers=1, distributed=False)
    assert {r.worker for r in plain.results} == {"cpu0"}


# --- torchrun and raw launchers on gloo (real processes) ---------------------------------------------------------


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint with 58 matrices (about a second of work per rank) and its single-process scan."""
    ck = write_llama(
        tmp_path_factory.mktemp("ck") / "medium",
        LlamaShape(layers=8, hidden=256, ffn=704, kv=64, vocab=768),
        layers_per_shard=3,
    )
    ref = streamscan.scan(ck, tmp_path_factory.mktemp("ref"), top_percent=[25], cpu_workers=1)
    return ck, ref.out_dir


def torchrun(n: int, ck: Path, out: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(n),
        "-m",
        "streamscan",
        "run",
        str(ck),
        "--out",
        str(out),
        "-q",
        "-p",
        "25",
        "--workers",
        "1",
        *extra,
    ]


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while lines(path) < count:
        assert proc.poll() is None and time.monotonic() < deadline, "the scan ended before the kill"
        time.sleep(0.01)


def rank_pid(out: Path, rank: int) -> int:
    return json.loads((out / rank_journal_name(rank)).read_text().splitlines()[0])["rank"]["pid"]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_a_single_process_scan(medium, tmp_path):
    ck, ref = medium
    out = tmp_path / "dist"
    run = subprocess.run(torchrun(2, ck, out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert outputs(out) == outputs(ref)
    names = journal_names(out / JOURNAL_NAME)
    total = len(json.loads((ref / "snr_results_medium.json").read_text()))
    assert len(names) == len(set(names)) == total
    workers = [json.loads(line)["worker"] for line in (out / JOURNAL_NAME).read_text().splitlines()[1:]]
    assert {w.split("/")[0] for w in workers} == {"rank0", "rank1"}
    assert not list(out.glob("streamscan.journal.rank-*"))  # folded by rank 0


@pytest.mark.slow
def test_a_rank_killed_mid_scan_loses_only_its_unfinished_jobs(medium, tmp_path):
    ck, ref = medium
    out = tmp_path / "killed"
    one_by_one = dict(os.environ, STREAMSCAN_COMMIT_RECORDS="1")  # each record on disk as it finishes
    proc = subprocess.Popen(torchrun(2, ck, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=one_by_one)
    wait_for(out / rank_journal_name(1), 6, proc)
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # torchrun tears the other rank down
    _, done = read_journals(out)
    total = len(json.loads((ref / "snr_results_medium.json").read_text()))
    assert 5 <= len(done) < total
    assert {n for n, r in done.items() if r.status == "ok"} <= stored_names(out)  # spectra go to disk first
    run = subprocess.run(torchrun(3, ck, out), capture_output=True, text=True, timeout=300)  # another world size
    assert run.returncode == 0, run.stderr
    assert outputs(out) == outputs(ref)
    names = journal_names(out / JOURNAL_NAME)
    assert len(names) == len(set(names)) == total  # nothing lost, nothing computed twice
    assert {n for n, r in read_journals(out)[1].items() if r.status == "ok"} <= stored_names(out)
    summary = json.loads((out / "streamscan_summary.json").read_text())
    assert summary["resumed_from_journal"] == len(done) and summary["ranks"] == 3  # rank0..2 computed results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_hung_rank_is_named_and_rank_0_writes_what_is_done(medium, tmp_path):
    """Ranks started by a plain launcher (as srun does): nothing tears them down, the barrier timeout must."""
    ck, ref = medium
    out = tmp_path / "hung"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    env["STREAMSCAN_COMMIT_RECORDS"] = "1"  # each record on disk as it finishes (the hang is timed by lines)
    copy = tmp_path / "own-cache" / ck.name  # each rank may read its own copy (its own HF cache)
    shutil.copytree(ck, copy)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamscan",
                "run",
                str(copy if r else ck),
                "--out",
                str(out),
                "-q",
                "-p",
                "25",
                "--workers",
                "1",
                "--rank-timeout",
                "3",
                "--distributed",
            ],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    wait_for(out / rank_journal_name(1), 4, procs[1])
    pid = rank_pid(out, 1)
    os.kill(pid, signal.SIGSTOP)  # hung: alive, holding its journal, never reaching the final barrier
    try:
        _, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 2
        message = [line for line in err.splitlines() if line.startswith("streamscan: error:")]
        assert len(message) == 1 and f"rank 1 (pid {pid} on {socket.gethostname()})" in message[0]
        assert "matrices missing; it did not finish within 3 s" in message[0] and "rerun the same command" in message[0]
    finally:
        procs[1].kill()
        procs[1].wait()
    partial = json.loads((out / "snr_results_medium.json").read_text())
    full = json.loads((ref / "snr_results_medium.json").read_text())
    assert 4 <= len(partial) < len(full) and all(full[n] == v for n, v in partial.items())
    streamscan.scan(ck, out, top_percent=[25], cpu_workers=1)  # world size 1: a plain rerun finishes it
    assert outputs(out) == outputs(ref)
    names = journal_names(out / JOURNAL_NAME)
    assert len(names) == len(set(names)) == len(full)


@pytest.mark.slow
def test_ranks_reading_different_checkpoints_all_stop_before_scanning(sharded_llama, tmp_path):
    other = write_llama(tmp_path / "other" / sharded_llama.name, LlamaShape(layers=4, ffn=192), layers_per_shard=2)
    out = tmp_path / "mixed"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    env["STREAMSCAN_COMMIT_RECORDS"] = "1"  # each record on disk as it finishes (the hang is timed by lines)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamscan",
                "run",
                str(other if r else sharded_llama),
                "--out",
                str(out),
                "-q",
                "--workers",
                "1",
            ],
            env=dict(env, RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    for err in errs:
        line = [x for x in err.splitlines() if x.startswith("streamscan: error:")]
        assert (
            len(line) == 1
            and "rank 1 (pid" in line[0]
            and "other checkpoint files or scan options than rank 0" in line[0]
        )
    assert read_journals(out)[1] == {} and not list(out.glob("streamscan.journal.rank-*"))
