"""Hostile scan directories, round 2 (issue 22): --fresh clears only under the lock, kept spectra are
checked against their matrix (dtype, length <= min(m, n), finite bounded values), a bad one is skipped with
one warning and replaced by the next run, and no symlink in the directory is followed."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from safetensors.torch import save_file

import streamscan
from streamscan.results.spectra import (
    MAX_VALUE,
    check_spectrum,
    load_spectra,
    missing,
    segments,
    spectra_dir,
    write_segment,
)
from tests.cli_helpers import invoke, one_line_error

NAME = "model.layers.1.mlp.down_proj"


def scan(model, out, **kw):
    return streamscan.scan(model, out, devices="cpu", cpu_workers=1, **kw)


_HELD = """
import sys, time
from pathlib import Path
import streamscan
model, out, flag, go = sys.argv[1:]
def progress(result, done, total, read_bytes):
    if done == 6:  # a few records committed with their spectra; hold the scan open here
        Path(flag).write_text("running")
        while not Path(go).exists():
            time.sleep(0.02)
streamscan.scan(model, out, devices="cpu", cpu_workers=1, progress=progress)
"""


def test_fresh_into_a_running_scan_is_refused_before_it_touches_anything(sharded_llama, tmp_path):
    out, flag, go = tmp_path / "out", tmp_path / "flag", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _HELD, str(sharded_llama), str(out), str(flag), str(go)], env=env)
    try:
        for _ in range(3000):
            if flag.exists() or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert flag.exists(), "the scan never reached its sixth record"
        for _ in range(500):
            if segments(out):
                break
            time.sleep(0.02)
        before = {p.name: p.read_bytes() for p in segments(out)}
        assert before
        refused = invoke("run", sharded_llama, "--out", out, "-q", "--fresh", "--workers", "1")
        one_line_error(refused, "another scan", "is writing here")
        assert {p.name: p.read_bytes() for p in segments(out)} == before  # nothing cleared
        go.write_text("go")
        assert proc.wait(timeout=300) == 0
    finally:
        go.write_text("go")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    header, results = streamscan.load_results(out)
    scored = {r.name: r.shape for r in results if r.status == "ok"}
    assert len(results) == len(header.targets) and scored
    assert missing(out, scored, scored) == set()  # every journaled matrix still has its spectrum


def test_fresh_clears_old_spectra_under_the_lock(single_llama, tmp_path):
    out = tmp_path / "out"
    scan(single_llama, out)
    write_segment(out, {"stale.matrix": torch.tensor([1.0])})
    scan(single_llama, out, fresh=True)
    assert "stale.matrix" not in load_spectra(out)


def _plant(out: Path, spectrum, name=NAME, number=900) -> Path:
    path = spectra_dir(out) / f"segment-main-{number:06d}.safetensors"
    save_file({name: spectrum}, str(path))
    return path


BAD = {
    "200k values for 128x256": torch.rand(200_000, dtype=torch.float64),
    "bf16": torch.tensor([3.0, 1.0], dtype=torch.bfloat16),
    "fp8": torch.tensor([3.0, 1.0]).to(torch.float8_e4m3fn),
    "bool": torch.tensor([True, False]),
    "0-d": torch.tensor(2.0, dtype=torch.float64),
    "inf": torch.tensor([float("inf"), 1.0], dtype=torch.float64),
    "nan": torch.tensor([float("nan"), 1.0], dtype=torch.float64),
    "1e200": torch.tensor([1e200, 1.0], dtype=torch.float64),
    "-1e200": torch.tensor([1.0, -1e200], dtype=torch.float64),
}


@pytest.fixture(scope="module")
def wide_scan(tmp_path_factory):
    """A scan of one 128x256 matrix (and its Llama neighbours) that kept its spectra."""
    from tests.conftest import write_tensors

    root = tmp_path_factory.mktemp("wide")
    g = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(128, 256, generator=g) for i in range(3)}
    model = write_tensors(root / "model" / "model.safetensors", tensors).parent
    out = root / "out"
    scan(model, out)
    return model, out


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_spectrum_is_skipped_with_one_warning_and_the_next_run_replaces_it(wide_scan, tmp_path, case, caplog):
    import shutil

    model, clean = wide_scan
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    name = "model.layers.1.mlp.down_proj"
    good = load_spectra(out)[name]
    _plant(out, BAD[case], name)
    with caplog.at_level(logging.WARNING):
        for cmd in ("metrics", "report"):
            res = invoke(cmd, out)
            assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(warned) == 2 and all("segment-main-000900" in w for w in warned), warned  # once per command
    import json

    rows = json.loads((out / "metrics.json").read_text())
    assert rows[name]["status"] == "missing spectrum" and rows["model.layers.0.mlp.down_proj"]["status"] == "ok"
    scan(model, out)  # the resumed run rescans it
    kept = load_spectra(out, {name: (128, 256)})
    assert torch.allclose(kept[name], good)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert invoke("metrics", out).exit_code == 0
    assert not [r for r in caplog.records if name in r.getMessage()]  # replaced: no more warnings


def test_an_unreadable_segment_warns_once_and_the_next_run_sets_it_aside(wide_scan, tmp_path, caplog):
    import shutil

    model, clean = wide_scan
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (spectra_dir(out) / "segment-main-000900.safetensors").write_bytes(b"\xff" * 40)
    with caplog.at_level(logging.WARNING):
        assert invoke("report", out).exit_code == 0
    assert len([r for r in caplog.records if "000900" in r.getMessage()]) == 1
    scan(model, out)
    assert (spectra_dir(out) / "segment-main-000900.safetensors.bad").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert invoke("metrics", out).exit_code == 0
    assert not caplog.records


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=12),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.int64]),
    rows=st.integers(1, 6),
)
def test_the_segment_reader_keeps_exactly_the_valid_spectra(tmp_path, values, dtype, rows):
    out = tmp_path / f"h{abs(hash((tuple(map(str, values)), str(dtype), rows)))}"
    spectrum = torch.tensor(values, dtype=torch.float64).to(dtype)
    spectra_dir(out).mkdir(parents=True)
    _plant(out, spectrum, "w", 1)
    got = load_spectra(out, {"w": (rows, 6)})
    valid = (
        dtype == torch.float64 and 0 < len(values) <= rows and all(0 <= v <= MAX_VALUE for v in values)  # False for NaN
    )
    assert ("w" in got) == valid
    assert (check_spectrum(spectrum, (rows, 6)) is None) == valid
    if valid:
        assert got["w"].tolist() == values


def _victim_dir(tmp_path) -> Path:
    target = tmp_path / "elsewhere"
    target.mkdir()
    save_file({NAME: torch.tensor([5.0, 4.0], dtype=torch.float64)}, str(target / "segment-main-000001.safetensors"))
    return target


def test_a_spectra_symlink_is_never_followed_for_reads(single_llama, tmp_path, caplog):
    out = tmp_path / "out"
    scan(single_llama, out, spectra=False)
    target = _victim_dir(tmp_path)
    os.symlink(target, spectra_dir(out))
    with caplog.at_level(logging.WARNING):
        assert load_spectra(out) == {}
        assert invoke("metrics", out).exit_code == 0
    assert any("symlink" in r.getMessage() for r in caplog.records)


def test_a_run_refuses_to_write_through_a_spectra_symlink(single_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = _victim_dir(tmp_path)
    os.symlink(target, spectra_dir(out))
    res = invoke("run", single_llama, "--out", out, "-q", "--workers", "1")
    one_line_error(res, "spectra", "symlink")
    assert sorted(p.name for p in target.iterdir()) == ["segment-main-000001.safetensors"]


def test_fresh_removes_a_spectra_symlink_not_its_target(single_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = _victim_dir(tmp_path)
    os.symlink(target, spectra_dir(out))
    assert invoke("run", single_llama, "--out", out, "-q", "--fresh", "--workers", "1").exit_code == 0
    assert not spectra_dir(out).is_symlink() and NAME not in load_spectra(out) or load_spectra(out)[NAME].numel() > 2
    assert sorted(p.name for p in target.iterdir()) == ["segment-main-000001.safetensors"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), header=st.booleans())
def test_any_bytes_as_a_segment_are_skipped_or_read_never_raised(tmp_path, data, header):
    import json as _json

    out = tmp_path / f"b{abs(hash((data, header)))}"
    spectra_dir(out).mkdir(parents=True)
    if header:  # a plausible header over arbitrary data
        head = _json.dumps({"w": {"dtype": "F64", "shape": [len(data) // 8], "data_offsets": [0, len(data)]}}).encode()
        data = len(head).to_bytes(8, "little") + head + data
    (spectra_dir(out) / "segment-main-000001.safetensors").write_bytes(data)
    got = load_spectra(out, {"w": (4, 4)})
    assert set(got) <= {"w"} and all(check_spectrum(v, (4, 4)) is None for v in got.values())
