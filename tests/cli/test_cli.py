import json
import sys

import pytest
import torch

import streamscan
from tests.cli_helpers import invoke, one_line_error
from tests.conftest import write_tensors


def test_run_writes_spectrum_outputs_and_summary(sharded_llama, tmp_path):
    out = tmp_path / "scan"
    res = invoke("run", sharded_llama, "--out", out, "-p", 25, "-p", 50)
    assert res.exit_code == 0, res.output
    assert "30 matrices (30 scored" in res.output and "9 tensors skipped" in res.output and "peak RSS" in res.output
    data = json.loads((out / "snr_results_tiny-llama.json").read_text())
    assert len(data) == 30 and data["model.layers.2.mlp.up_proj"]["type"] == "mlp.up_proj"
    assert (out / "snr_results_tiny-llama_sorted.json").exists()
    assert (out / "snr_results_tiny-llama_unfrozenparameters_25percent.yaml").exists()
    summary = json.loads((out / "streamscan_summary.json").read_text())
    assert summary["skipped_tensors"]["model.norm"].startswith("1-D")
    # the Python API gives the same numbers
    api = streamscan.scan(sharded_llama, tmp_path / "api", top_percent=[25])
    assert {k: min(v, sys.float_info.max) for k, v in api.snr.items()} == {k: v["snr"] for k, v in data.items()}


def test_rerun_resumes_from_the_journal(sharded_llama, tmp_path):
    out = tmp_path / "scan"
    assert invoke("run", sharded_llama, "--out", out, "-q").exit_code == 0
    res = invoke("run", sharded_llama, "--out", out)
    assert res.output == (
        "streamscan: nothing left to scan: 30 matrices (30 scored, 0 without SNR) already in the journal; "
        f"outputs rewritten, the summary of the run that scanned them kept -> {out}\n"
    )


def test_status_select_and_inspect(sharded_llama, tmp_path):
    out = tmp_path / "scan"
    invoke("run", sharded_llama, "--out", out, "-q", "--include", "*mlp*")
    st = invoke("status", out)
    assert "12/12 matrices done, 0 remaining" in st.output and "complete" in st.output
    assert json.loads(invoke("status", out, "--json").output)["scored"] == 12
    sel = invoke("select", out, "-p", 50)
    assert sel.exit_code == 0
    text = (out / "snr_results_tiny-llama_unfrozenparameters_50percent.yaml").read_text()
    assert text.count("- model.layers.") == 6  # 3 types x int(4 * 50 / 100)
    ins = invoke("inspect", sharded_llama)
    assert "30 matrices to score, 9 tensors skipped, 2 shard(s)" in ins.output


def test_select_works_on_a_partial_scan(sharded_llama, tmp_path):
    out = tmp_path / "scan"
    invoke("run", sharded_llama, "--out", out, "-q")
    journal = out / "streamscan.journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:11]))  # header + 10 results
    assert "10/30 matrices done" in invoke("status", out).output
    assert invoke("select", out, "-p", 100).exit_code == 0


def test_user_errors_are_one_line_exit_2(tmp_path, sharded_llama):
    one_line_error(invoke("run", tmp_path / "missing"), "no such file")
    bad = write_tensors(tmp_path / "bad" / "model.safetensors", {"a.weight": torch.randn(4, 4)})
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 32)
    one_line_error(invoke("run", bad.parent, "--out", tmp_path / "o"), "invalid JSON", str(bad))
    (sharded_llama / "model-00001-of-00002.safetensors").rename(tmp_path / "moved")
    one_line_error(invoke("run", sharded_llama), "model-00001-of-00002.safetensors", "missing")
    one_line_error(invoke("status", tmp_path / "nothing"), "no streamscan scan here")
    one_line_error(invoke("run", tmp_path / "bad", "--devices", "0,1"), "--devices")


def test_other_method_on_same_out_is_refused_with_fresh_hint(sharded_llama, tmp_path):
    out = tmp_path / "scan"
    invoke("run", sharded_llama, "--out", out, "-q", "--include", "*k_proj")
    one_line_error(
        invoke("run", sharded_llama, "--out", out, "--method", "svdvals32", "--include", "*k_proj"),
        "different method",
        "--fresh",
    )
    assert (
        invoke(
            "run", sharded_llama, "--out", out, "-q", "--method", "svdvals32", "--include", "*k_proj", "--fresh"
        ).exit_code
        == 0
    )


def test_degenerate_matrices_are_reported_not_crashed(tmp_path):
    path = write_tensors(
        tmp_path / "deg" / "model.safetensors",
        {
            "model.layers.0.zero.weight": torch.zeros(16, 32),
            "model.layers.0.nan.weight": torch.full((16, 32), float("nan")),
            "model.layers.0.row.weight": torch.randn(1, 32),
            "model.layers.0.ok.weight": torch.randn(16, 32),
        },
    )
    res = invoke("run", path, "--out", tmp_path / "o")
    assert res.exit_code == 0 and "2 scored, 2 without SNR" in res.output
    data = json.loads((tmp_path / "o" / "snr_results_deg.json").read_text())
    # D1: the unscored are listed in the summary, not in the results JSON; D2: the 1 x 32 row has one singular
    # value and no noise, the reference's Infinity, written as the largest double and flagged
    assert set(data) == {"model.layers.0.ok", "model.layers.0.row"}
    assert data["model.layers.0.row"] == {"snr": sys.float_info.max, "type": "row", "degenerate": "noise-sum-0"}
    summary = json.loads((tmp_path / "o" / "streamscan_summary.json").read_text())
    assert summary["unscored_tensors"]["model.layers.0.zero"] == "all-zero matrix"
    assert "NaN" in summary["unscored_tensors"]["model.layers.0.nan"]
    assert summary["degenerate_tensors"] == {"model.layers.0.row": "noise-sum-0"}


@pytest.mark.parametrize("percent", ["0", "101"])
def test_bad_percent(sharded_llama, tmp_path, percent):
    one_line_error(invoke("run", sharded_llama, "--out", tmp_path / "o", "-p", percent), "--top-percent")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--devices", "0,1"], ["--devices 0,1: no CUDA GPU is visible here; use --devices cpu"]),
        (["--devices", "gpu0"], ["'gpu0' is not a GPU index or 'cpu'"]),
        (["--max-memory", "lots"], ["--max-memory lots: write it as bytes or with a unit"]),
    ],
)
def test_device_and_memory_options_fail_in_one_line(sharded_llama, tmp_path, args, fragments):
    one_line_error(invoke("run", sharded_llama, "--out", tmp_path / "o", *args), *fragments)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_run_reports_devices_and_overlap(sharded_llama, tmp_path):
    res = invoke(
        "run", sharded_llama, "--out", tmp_path / "o", "--devices", "cpu", "--workers", "2", "--max-memory", "64M"
    )
    assert res.exit_code == 0, res.output
    assert "cpu: 30 jobs" in res.output and "overlap" in res.output
    run = json.loads((tmp_path / "o" / "streamscan_summary.json").read_text())["run"]
    assert run["devices"]["cpu"]["slots"] == 2 and run["devices"]["cpu"]["jobs"] == 30
    assert run["max_memory_mb"] == 64 and run["peak_held_mb"] <= 64
    assert 0 < run["overlap"] <= 1.0
