import dataclasses
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscan.errors import JournalError, OutputError
from streamscan.records import Fingerprint, Result, ScanHeader
from streamscan.results.journal import JOURNAL_NAME, Journal, is_locked, read_journal

HEADER = ScanHeader(
    version="test", fingerprint=Fingerprint("m", (), "gram64"), model="m", slug="m", targets=("a", "b", "c")
)


def res(name, snr=1.0, status="ok"):
    return Result(name=name, type="t", shape=(4, 4), dtype="F32", snr=snr, status=status)


def test_append_is_durable_and_resume_reads_it(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a", 0.5))
        j.append(res("b", None, "error"))
    with Journal(tmp_path, HEADER) as j:
        assert j.results["a"].snr == 0.5 and j.results["a"].shape == (4, 4)
        assert j.done() == {"a"}  # errors are retried


def test_torn_last_line_is_dropped_and_overwritten(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a"))
    path = tmp_path / JOURNAL_NAME
    with open(path, "ab") as fh:
        fh.write(b'{"name": "b", "ty')  # killed mid-write
    with Journal(tmp_path, HEADER) as j:
        assert set(j.results) == {"a"}
        j.append(res("c"))
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)


def test_a_name_twice_keeps_the_last_record(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a", None, "error"))
        j.append(res("a", 2.0))
    _, results, _ = read_journal(tmp_path)
    assert list(results) == ["a"] and results["a"].snr == 2.0


def test_different_fingerprint_is_refused_unless_fresh(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a"))
    other = replace(HEADER, fingerprint=Fingerprint("m", (), "svdvals32"))
    with pytest.raises(JournalError, match="different method.*--fresh"):
        Journal(tmp_path, other)
    with Journal(tmp_path, other, fresh=True) as j:
        assert j.results == {}


def test_second_writer_is_refused_by_the_lock(tmp_path):
    with Journal(tmp_path, HEADER):
        assert is_locked(tmp_path)
        with pytest.raises(JournalError, match="another scan"):
            Journal(tmp_path, HEADER)
    assert not is_locked(tmp_path)


def test_corruption_in_the_middle_is_set_aside(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a"))
        j.append(res("b"))
    path = tmp_path / JOURNAL_NAME
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"{oops\n" + lines[2])
    assert list(read_journal(tmp_path)[1]) == ["b"]  # readers skip it and change nothing
    assert path.read_bytes() == lines[0] + b"{oops\n" + lines[2]
    with Journal(tmp_path, HEADER) as j:  # the writer moves it beside the journal
        assert list(j.results) == ["b"]
    assert path.read_bytes() == lines[0] + lines[2]
    assert (tmp_path / "streamscan.journal.rejected.jsonl").read_bytes() == b"{oops\n"


def lines_on_disk(path):
    return path.read_bytes().count(b"\n") - 1  # minus the header


def test_group_commit_fsyncs_in_batches_bounded_by_count(tmp_path, monkeypatch):
    import os

    fsyncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd)))
    with Journal(tmp_path, HEADER, commit_records=4, commit_seconds=60) as j:
        fsyncs.clear()
        for i in range(10):
            j.append(res(f"m{i}"))
        assert lines_on_disk(tmp_path / JOURNAL_NAME) == 8 and len(fsyncs) == 2 and j.commits == 2
        assert len(j.results) == 10  # counted as done at once
    assert lines_on_disk(tmp_path / JOURNAL_NAME) == 10 and len(fsyncs) == 3  # close commits the rest


def test_group_commit_is_bounded_by_time_even_while_nothing_is_appended(tmp_path):
    import time

    with Journal(tmp_path, HEADER, commit_records=1000, commit_seconds=0.5) as j:
        start = time.monotonic()
        j.append(res("a"))
        on_disk = lines_on_disk(tmp_path / JOURNAL_NAME)
        assert on_disk == 0 or time.monotonic() - start >= 0.5  # (unless this thread slept past the deadline)
        deadline = time.monotonic() + 120  # a generous bound for a loaded machine; it ends at the commit
        while j.commits == 0 and time.monotonic() < deadline:  # the batch is written, then fsync'd, then counted
            time.sleep(0.01)
        assert lines_on_disk(tmp_path / JOURNAL_NAME) == 1 and j.commits == 1


def test_an_exception_inside_the_journal_still_commits_the_batch(tmp_path):
    with pytest.raises(RuntimeError), Journal(tmp_path, HEADER, commit_records=1000, commit_seconds=60) as j:
        j.append(res("a"))
        j.append(res("b"))
        raise RuntimeError("a job failed the scan")
    _, results, _ = read_journal(tmp_path)
    assert sorted(results) == ["a", "b"]


def test_a_batch_cut_short_by_a_full_disk_is_written_once_when_retried(tmp_path):
    """The file cannot grow in the middle of a batch (part of it on disk, a record torn: RLIMIT_FSIZE, as a
    full disk), then can again: the retry at close leaves every record exactly once (the first part of the
    batch was once written twice: left in the file object's buffer, then written again with the batch)."""
    import resource
    import signal

    j = Journal(tmp_path, HEADER, commit_records=1000, commit_seconds=60)
    for i in range(6):
        j.append(res(f"m{i}"))
    size = (tmp_path / JOURNAL_NAME).stat().st_size
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 3 * len(json.dumps(res("m0").to_dict())) // 2, limits[1]))
        with pytest.raises(OutputError, match="File too large"):
            j.commit()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    j.close()
    names = [json.loads(line)["name"] for line in (tmp_path / JOURNAL_NAME).read_text().splitlines()[1:]]
    assert names == [f"m{i}" for i in range(6)]


def test_a_record_is_exactly_dataclasses_asdict_of_its_result():
    # the journal writes Result.to_dict() (a copy of the fields) instead of the ten times slower asdict

    full = Result("m.0.w", "w", (8, 2), "BF16", 0.25, "r", "null", "head", "gram64", 1.5, "cpu1", 3.0, 0.5, 2, 0.1, "n")
    for r in (res("a"), res("b", None, "error"), full):
        assert r.to_dict() == dataclasses.asdict(r)
        assert list(r.to_dict()) == [f.name for f in dataclasses.fields(Result)]


def test_records_read_back_are_the_results_written_field_for_field(tmp_path):

    full = Result("m.0.w", "w", (8, 2), "BF16", 0.25, "r", "null", "head", "gram64", 1.5, "cpu1", 3.0, 0.5, 2, 0.1, "n")
    written = [res("a"), res("b", None, "error"), full, Result("c", "t", (), "F32", None)]
    with Journal(tmp_path, HEADER) as j:
        for r in written:
            j.append(r)
    _, back, _ = read_journal(tmp_path)
    for r in written:
        got = back[r.name]
        assert got == r and list(vars(got)) == list(vars(r)) and dataclasses.asdict(got) == dataclasses.asdict(r)


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "t", "shape": [4, 4], "dtype": "F32", "snr": 1.0}',  # no name
        b'{"name": "x", "type": "t", "shape": [4, true], "dtype": "F32", "snr": 1.0}',
        b'{"name": "x", "type": 3, "shape": [4, 4], "dtype": "F32", "snr": 1.0}',
        b'{"name": "x", "type": "t", "shape": [4, 4], "dtype": "F32", "snr": 1.0, "status": "done"}',
        b'{"name": "x", "type": "t", "shape": [4, 4], "dtype": "F32", "snr": "1.0"}',
        b'{"name": "x", "type": "t", "shape": [4, 4], "dtype": "F32", "snr": 1.0, "seconds": true}',
        b"[1, 2]",
    ],
)
def test_a_line_that_parses_but_is_no_record_is_set_aside(tmp_path, line):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("a"))
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(line + b"\n")
    _, back, _ = read_journal(tmp_path)
    assert set(back) == {"a"}


_VALUES = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=3)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from([*(f.name for f in dataclasses.fields(Result)), "extra"]), _VALUES, max_size=4))
def test_a_journal_line_is_read_as_its_record_or_refused_with_a_value_error(over):
    # what any JSON object becomes: the Result it spells (unknown fields left out), or a ValueError
    from streamscan.results.journal import _result_from

    row = json.loads(json.dumps({**res("a").to_dict(), **over}))
    try:
        got = _result_from(dict(row))
    except ValueError:
        return
    assert got == Result(**{k: v for k, v in row.items() if k != "extra"} | {"shape": tuple(row["shape"])})
    assert isinstance(got.name, str) and got.status in ("ok", "null", "error") and isinstance(got.shape, tuple)


def test_degenerate_records_are_strict_json_and_read_back_as_inf(tmp_path):
    import math

    inf = replace(res("a", math.inf), degenerate="rank-deficient")
    with Journal(tmp_path, HEADER) as j:
        j.append(inf)
        j.append(res("b", 2.0))
    text = (tmp_path / JOURNAL_NAME).read_text()
    assert "Infinity" not in text and '"snr":1.7976931348623157e+308' in text
    rows = [json.loads(line, parse_constant=pytest.fail) for line in text.splitlines()]
    assert rows[1]["degenerate"] == "rank-deficient" and rows[2]["degenerate"] is None
    _, results, _ = read_journal(tmp_path)
    assert results["a"] == inf and results["b"].snr == 2.0 and results["b"].degenerate is None


def test_a_journal_before_degenerate_scores_reads_them_as_a_scan_gives_them_now(tmp_path):
    with Journal(tmp_path, HEADER) as j:
        j.append(res("b", 2.0))
    path = tmp_path / JOURNAL_NAME
    old = dict(res("a", 3.0).to_dict(), n_signal=4)  # 4 of 4 values above the threshold: was signal / 1 / S[0]
    deficient = dict(res("c", None, "null").to_dict(), reason="no noise: rank-deficient matrix (numerical rank 1 of 4)")
    with open(path, "a") as fh:
        for row in (old, deficient):
            del row["degenerate"]
            fh.write(json.dumps(row) + "\n")
    _, results, _ = read_journal(tmp_path)
    assert (results["a"].snr, results["a"].degenerate) == (float("inf"), "noise-sum-0")
    assert (results["c"].snr, results["c"].degenerate, results["c"].status) == (float("inf"), "rank-deficient", "ok")
    assert results["b"].degenerate is None and results["b"].snr == 2.0
