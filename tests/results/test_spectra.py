"""Kept spectra: every scored matrix's singular values beside the journal, crash-safe, across ranks."""

import json

import torch

import streamscan
from streamscan.results.spectra import SpectraWriter, load_spectra, missing, segments, stored_names


def test_a_scan_keeps_every_scored_matrix_spectrum_exactly(single_llama, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "scan"
    res = streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
    kept = load_spectra(out)
    scored = {r.name for r in res.results if r.status == "ok"}
    assert scored and scored <= set(kept)
    weights = load_file(str(single_llama / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    S = torch.linalg.svdvals(weights[name + ".weight"].double())
    assert kept[name].dtype == torch.float64 and kept[name].shape == S.shape
    assert torch.allclose(kept[name], S, rtol=1e-9, atol=1e-12)
    assert bool((kept[name][:-1] >= kept[name][1:]).all())  # descending
    # the journal stays as it was: no singular values in it
    assert "singular" not in (out / "streamscan.journal.jsonl").read_text()


def test_no_spectra_keeps_none(single_llama, tmp_path):
    out = tmp_path / "scan"
    streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1, spectra=False)
    assert not (out / "spectra").exists() and load_spectra(out) == {}


def test_a_resume_rescans_scored_matrices_without_a_spectrum(single_llama, tmp_path):
    out = tmp_path / "scan"
    streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
    journal = (out / "streamscan.journal.jsonl").read_text().splitlines()
    for seg in segments(out):  # spectra lost (deleted by hand, say)
        seg.unlink()
    res = streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
    scored = {r.name for r in res.results if r.status == "ok"}
    assert scored <= stored_names(out)
    again = (out / "streamscan.journal.jsonl").read_text().splitlines()
    assert len(again) == len(journal) + len(scored)  # only the lost ones were rescanned
    assert missing(out, scored, scored) == set()


def test_segments_are_whole_files_numbered_per_rank_and_a_later_record_wins(tmp_path):
    a = SpectraWriter(tmp_path, rank=None)
    for i in range(5):
        a.add(f"m{i}", torch.tensor([3.0, 2.0, float(i)]))
        assert f"m{i}" not in stored_names(tmp_path)  # buffered until the journal's next commit
        if i % 2:
            a.flush()
    a.close()
    b = SpectraWriter(tmp_path, rank=3)
    b.add("m0", torch.tensor([9.0, 1.0]))  # a later rank's record of the same name wins
    b.close()
    (tmp_path / "spectra" / ".segment-main-000009.tmp").write_bytes(b"torn")  # a kill mid-write: ignored
    names = [p.name for p in segments(tmp_path)]
    # a's three parts (one per flush) merged into one segment on close, numbered after them
    assert names == ["segment-main-000004.safetensors", "segment-00003-000001.safetensors"]
    kept = load_spectra(tmp_path)
    assert sorted(kept) == ["m0", "m1", "m2", "m3", "m4"] and kept["m0"].tolist() == [9.0, 1.0]
    c = SpectraWriter(tmp_path)  # a resumed writer continues the numbering and removes torn temporaries
    c.add("m5", torch.tensor([1.0]))
    assert c.flush().name == "segment-main-000005.safetensors"
    assert not list((tmp_path / "spectra").glob("*.tmp"))
    assert json.loads(json.dumps(sorted(stored_names(tmp_path)))) == ["m0", "m1", "m2", "m3", "m4", "m5"]


def test_the_journal_commits_a_batch_only_after_its_spectra_are_on_disk(tmp_path):
    from streamscan.records import Fingerprint, Result, ScanHeader
    from streamscan.results.journal import JOURNAL_NAME, Journal

    header = ScanHeader("t", Fingerprint("m", (), "gram64"), "m", "m", ("a", "b"))
    writer = SpectraWriter(tmp_path)
    order = []
    with Journal(tmp_path, header, commit_records=2, commit_seconds=60) as journal:
        journal.before_commit = lambda: (order.append(sorted(stored_names(tmp_path))), writer.flush())
        for name in ("a", "b"):
            writer.add(name, torch.tensor([2.0, 1.0]))
            journal.append(Result(name, "t", (2, 2), "F32", 1.0))
        lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
        assert len(lines) == 3 and stored_names(tmp_path) == {"a", "b"}  # committed: records and spectra
    assert order == [[]]  # the spectra were written inside the commit, before the records


def test_metrics_from_kept_spectra_and_missing_ones_marked(single_llama, tmp_path):
    import csv

    from click.testing import CliRunner

    from streamscan.cli import main

    out = tmp_path / "scan"
    res = streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
    paths = streamscan.metrics(out, workers=1)
    assert [p.name for p in paths] == ["metrics.csv", "metrics.json", "metrics_by_type.csv", "metrics_by_type.json"]
    rows = json.loads((out / "metrics.json").read_text())
    assert set(rows) == {r.name for r in res.results}
    for r in res.results:
        row = rows[r.name]
        if r.degenerate:  # SNR inf (D2): no number in the metrics' strict JSON
            assert row["status"] == "ok" and row["snr"] is None
        elif r.status == "ok":
            assert row["status"] == "ok" and row["alpha"] > 1 and abs(row["snr"] - r.snr) <= 1e-9 * r.snr
    by_type = json.loads((out / "metrics_by_type.json").read_text())
    assert by_type["mlp.down_proj"]["count"] == 2 and by_type["mlp.down_proj"]["alpha_median"] > 1
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == len(res.results)
    for seg in segments(out):
        seg.unlink()
    cli = CliRunner().invoke(main, ["metrics", "--out", str(out), "--dest", str(tmp_path / "m"), "--workers", "1"])
    assert cli.exit_code == 0, cli.output
    rows = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert {row["status"] for n, row in rows.items() if res.results and n in scored_names(res)} == {"missing spectrum"}


def scored_names(res) -> set:
    return {r.name for r in res.results if r.status == "ok"}


def test_write_segment_adds_the_next_segment(tmp_path):
    from streamscan.results.spectra import write_segment

    first = write_segment(tmp_path, {"a": torch.tensor([2.0, 1.0])}, rank=2)
    second = write_segment(tmp_path, {"b": torch.tensor([1.0], dtype=torch.float32)}, rank=2)
    assert (first.name, second.name) == ("segment-00002-000001.safetensors", "segment-00002-000002.safetensors")
    kept = load_spectra(tmp_path)
    assert kept["a"].tolist() == [2.0, 1.0] and kept["b"].dtype == torch.float64


# --- hostile spectra/ directories -------------------------------------------------------------------------------


def _cli(*args):
    from click.testing import CliRunner

    from streamscan.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_symlinks_planted_in_spectra_are_never_followed(single_llama, tmp_path):
    ref = streamscan.scan(single_llama, tmp_path / "ref", cpu_workers=1)
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out"
    (out / "spectra").mkdir(parents=True)
    for name in (".segment-main-000001.tmp", "segment-main-000001.safetensors", "segment-main-000002.safetensors"):
        (out / "spectra" / name).symlink_to(victim)  # the temp name earlier versions used, and segment names
    streamscan.scan(single_llama, out, cpu_workers=1)
    assert victim.read_bytes() == b"precious\n"
    assert all(not p.is_symlink() for p in segments(out))
    kept, want = load_spectra(out), load_spectra(ref.out_dir)
    assert set(kept) == set(want) and all(torch.equal(kept[n], want[n]) for n in kept)


def test_a_corrupt_or_truncated_segment_is_one_warning_and_the_next_scan_recomputes_it(single_llama, tmp_path, caplog):
    ref = streamscan.scan(single_llama, tmp_path / "ref", cpu_workers=1)
    out = tmp_path / "out"
    streamscan.scan(single_llama, out, cpu_workers=1)
    (seg,) = segments(out)
    data = seg.read_bytes()
    for broken in (data[: len(data) // 2], b"\xff" * 64, b""):
        seg.write_bytes(broken)
        caplog.clear()
        assert load_spectra(out) == {} and stored_names(out) == set()
        assert any("unreadable spectra segment" in r.getMessage() for r in caplog.records)
        for command in ("metrics", "report"):
            result = _cli(command, out)
            assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
    streamscan.scan(single_llama, out, cpu_workers=1)  # the matrices without a spectrum are rescanned
    kept, want = load_spectra(out), load_spectra(ref.out_dir)
    assert set(kept) == set(want) and all(torch.equal(kept[n], want[n]) for n in kept)


def test_segment_bytes_are_exactly_what_safetensors_save_writes():
    import torch
    from safetensors.torch import save

    from streamscan.results.spectra import FORMAT, _serialize

    g = torch.Generator().manual_seed(0)
    spectra = {
        f"model.layers.{i}.mlp.experts.{j}.down_proj": torch.rand(3 + i + j, dtype=torch.float64, generator=g)
        for i in range(3)
        for j in range(5)
    }
    spectra["strided"] = torch.rand(20, dtype=torch.float64, generator=g)[::2]  # made contiguous on the way
    expected = dict(spectra, strided=spectra["strided"].contiguous())
    assert _serialize(spectra) == save(expected, metadata={"format": FORMAT})


def test_parts_close_into_a_segment_at_256_spectra_and_every_part_is_on_disk_at_once(tmp_path, monkeypatch):
    from streamscan.results import spectra as sp

    monkeypatch.setattr(sp, "SEGMENT_MATRICES", 4)
    w = SpectraWriter(tmp_path)
    for i in range(10):
        w.add(f"m{i}", torch.tensor([2.0, float(i)]))
        w.flush()
        assert f"m{i}" in stored_names(tmp_path)  # on disk before the journal's commit
    w.close()
    # parts 1-4 became segment 5, parts 6-9 segment 10, parts 11-12 segment 13
    assert [p.name for p in segments(tmp_path)] == [f"segment-main-{n:06d}.safetensors" for n in (5, 10, 13)]
    assert {k: v.tolist() for k, v in load_spectra(tmp_path).items()} == {f"m{i}": [2.0, i] for i in range(10)}
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~_umask() for p in segments(tmp_path))


def _umask():
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
