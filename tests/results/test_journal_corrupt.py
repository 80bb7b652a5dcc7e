"""A corrupt journal loses nothing else: good records kept, bad lines set aside beside it, only those redone."""

import json

import pytest

from streamscan.results.journal import JOURNAL_NAME
from tests.cli_helpers import invoke, outputs

BAD_LINES = {
    "garbage": b"{this is not json\n",
    "not a record": b"[1, 2, 3]\n",
    "wrong types": b'{"name": 3, "type": null, "shape": "x", "dtype": 1, "snr": 1.0}\n',
    "nan": None,  # a real record with "snr": NaN, built below
}


def run(model, out):
    return invoke("run", model, "--out", out, "-q", "-p", "50", "--workers", "1")


@pytest.fixture
def scanned(sharded_llama, tmp_path):
    out = tmp_path / "out"
    assert run(sharded_llama, out).exit_code == 0
    return out


def test_corrupt_lines_are_set_aside_and_only_their_matrices_recomputed(sharded_llama, scanned, caplog):
    reference = outputs(scanned)
    journal = scanned / JOURNAL_NAME
    lines = journal.read_bytes().splitlines(keepends=True)
    header, records = lines[0], lines[1:]
    total = len(records)
    nan = json.loads(records[7])
    damaged = {3: BAD_LINES["garbage"], 5: BAD_LINES["not a record"], 7: None, 9: BAD_LINES["wrong types"]}
    victims = {json.loads(records[i])["name"] for i in damaged}
    out_lines = [header]
    for i, line in enumerate(records):
        if i == 7:
            out_lines.append(line.replace(json.dumps(nan["snr"]).encode(), b"NaN", 1))
        else:
            out_lines.append(damaged.get(i) or line)
    journal.write_bytes(b"".join(out_lines))
    for f in scanned.glob("snr_results_*"):
        f.unlink()

    status = invoke("status", scanned)
    assert status.exit_code == 0 and f"{total - 4}/{total} matrices done" in status.output, status.output
    assert invoke("select", scanned, "-p", "50").exit_code == 0

    caplog.clear()
    result = run(sharded_llama, scanned)
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "moved to streamscan.journal.rejected.jsonl" in warnings[0], warnings
    assert "--fresh" not in warnings[0] and "\n" not in warnings[0]
    rejected = (scanned / "streamscan.journal.rejected.jsonl").read_bytes().splitlines(keepends=True)
    assert len(rejected) == 4 and rejected[0] == BAD_LINES["garbage"] and b"NaN" in rejected[2]
    new = journal.read_bytes().splitlines()[1:]
    assert len(new) == total
    redone = [json.loads(line)["name"] for line in new[total - 4 :]]
    assert set(redone) == victims  # only those were recomputed, appended after the kept records
    assert outputs(scanned) == reference


def test_corrupt_rank_journal_lines_are_kept_aside_when_folded(tmp_path):
    from streamscan.results.journal import Journal, rank_journal_name
    from tests.results.test_journal import HEADER, res

    with Journal(tmp_path, HEADER, rank=1) as j:
        j.append(res("a"))
        j.append(res("b"))
    path = tmp_path / rank_journal_name(1)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"[]\n" + lines[2])
    with Journal(tmp_path, HEADER) as j:
        assert list(j.results) == ["b"]
    assert not path.exists()
    assert (tmp_path / "streamscan.journal.rejected.jsonl").read_bytes() == b"[]\n"
