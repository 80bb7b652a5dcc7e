"""beside: outputs written by a forked child while the parent writes the others."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streamscan.results import beside as beside_mod
from streamscan.results.beside import beside, can_fork

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_the_work_runs_in_a_child_and_wait_returns_once_its_file_is_written(tmp_path):
    if not can_fork():
        pytest.skip("forking is off here (other threads, one core or STREAMSCAN_NO_FORK)")

    def work():
        (tmp_path / "out.txt").write_text(str(os.getpid()))

    wait = beside(work)
    wait()
    written = int((tmp_path / "out.txt").read_text())
    assert written != os.getpid()  # made by the child, and there once wait() returned


def test_a_failing_child_is_redone_here_and_its_error_raised_here(tmp_path, monkeypatch):
    monkeypatch.setattr(beside_mod, "can_fork", lambda: True)
    calls = []

    def work():
        calls.append(os.getpid())
        if os.getpid() == parent:
            raise OSError("disk full")  # the error the user must see, in this process
        os._exit(3)  # the child dies without writing

    parent = os.getpid()
    wait = beside(work)
    with pytest.raises(OSError, match="disk full"):
        wait()
    assert calls == [parent]  # (the child's own call is in its own memory)


def test_with_another_thread_running_it_runs_inline(tmp_path, monkeypatch):
    monkeypatch.delenv("STREAMSCAN_NO_FORK", raising=False)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not can_fork()
        ran = []
        wait = beside(lambda: ran.append(os.getpid()))
        assert ran == [os.getpid()]  # done before beside returned, here
        wait()
    finally:
        stop.set()
        other.join()


def test_no_fork_variable_runs_inline(monkeypatch):
    monkeypatch.setenv("STREAMSCAN_NO_FORK", "1")
    assert not can_fork()


def test_merge_writes_the_same_moe_outputs_forked_or_not(tmp_path, monkeypatch):
    from streamscan.pipeline import merge, scan
    from tests.fixtures.synthetic_moe import MoeShape, write_moe

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the MoE outputs are written in this process")
    ck = write_moe(tmp_path / "moe", "mixtral", MoeShape(experts=4))
    scan(ck, tmp_path / "scan", devices="cpu", top_percent=[25])
    outputs = ("moe_experts.csv", "moe_report.html", "snr_results_moe_sorted.json")
    monkeypatch.setenv("STREAMSCAN_NO_FORK", "1")
    merge(tmp_path / "scan", top_percent=[25])
    inline = {n: (tmp_path / "scan" / n).read_bytes() for n in outputs if (tmp_path / "scan" / n).exists()}
    for n in inline:
        (tmp_path / "scan" / n).unlink()
    # in a fresh process (this one may hold other tests' threads, which turn forking off), counting forks
    code = (
        "import os, sys; from streamscan.pipeline import merge; real = os.fork; n = []; "
        "os.fork = lambda: n.append(1) or real(); merge(sys.argv[1], top_percent=[25]); print(len(n))"
    )
    env = {**os.environ, "STREAMSCAN_NO_FORK": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "scan")], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]  # the MoE outputs were written by a child
    assert inline and {n: (tmp_path / "scan" / n).read_bytes() for n in inline} == inline
