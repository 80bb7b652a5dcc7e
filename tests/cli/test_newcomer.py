"""The path of a new user (issue 21): each surprise a newcomer met, pinned by what the command line now does."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamscan.cli import main, progress
from streamscan.cli.options import creates
from streamscan.results import overview
from tests.conftest import write_tensors
from tests.fixtures.synthetic import LlamaShape, write_llama

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# Each case: (arguments, the one line on stderr). {m}: a model directory, {f}: a file.
BAD_OPTIONS = [
    (["run", "{m}", "-p", "0"], "Invalid value for '--top-percent' / '-p': 0.0 is not in the range 0<x<=100 "
     "(see `streamscan run --help`)"),
    (["run", "{m}", "-p", "101"], "Invalid value for '--top-percent' / '-p': 101.0 is not in the range 0<x<=100 "
     "(see `streamscan run --help`)"),
    (["run", "{m}", "--devices", "cuda"], "--devices cuda: 'cuda' is not a GPU index or 'cpu'; e.g. --devices "
     "0,1,cpu or auto"),
    (["run", "{m}/missing"], "{m}/missing: no such file or directory; give a checkpoint directory, a .safetensors, "
     ".gguf or .bin file, or a Hub id (org/name)"),
    (["run", "{m}", "--out", "{f}"], "{f}: is a file, not a directory; choose another --out"),
    (["run"], "Missing argument 'MODEL' (see `streamscan run --help`)"),
    (["run", "{m}", "--max-memory", "lots"], "--max-memory lots: write it as bytes or with a unit, e.g. 24G or 512M"),
    (["run", "{m}", "--shard", "2/2"], "--shard 2/2: expected i/N with 0 <= i < N, e.g. --shard 0/4"),
]  # fmt: skip

CHECK_BEFORE_TORCH = """
import json, sys
from click.testing import CliRunner
from streamscan.cli import main
seen = [[r.exit_code, r.stderr] for r in (CliRunner().invoke(main, a) for a in json.loads(sys.argv[1]))]
print(json.dumps({"results": seen, "torch": "torch" in sys.modules}))
"""


def test_bad_options_are_one_line_before_torch_is_imported(tmp_path):
    model = write_tensors(tmp_path / "m" / "model.safetensors", {"a.weight": __import__("torch").ones(4, 4)}).parent
    file = tmp_path / "a-file"
    file.write_text("x")
    cases = [[a.format(m=model, f=file) for a in args] for args, _ in BAD_OPTIONS]
    done = python(CHECK_BEFORE_TORCH, json.dumps(cases))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["torch"] is False  # answered in about a second, not after torch's seven
    for (code, stderr), (_, line) in zip(report["results"], BAD_OPTIONS):
        assert (code, stderr) == (2, f"streamscan: error: {line.format(m=model, f=file)}\n")


@pytest.mark.parametrize(
    "args, line",
    [
        (["status", "--bogus"], "No such option '--bogus'. Did you mean '--out'? (see `streamscan status --help`)"),
        (["bogus"], "No such command 'bogus' (see `streamscan --help`)"),
        (["select", "x"], "Missing option '--top-percent' / '-p' (see `streamscan select --help`)"),
        (["report", "x", "-p", "abc"], "Invalid value for '--top-percent' / '-p': 'abc' is not a valid float range "
         "(see `streamscan report --help`)"),
    ],
)  # fmt: skip
def test_clicks_own_errors_are_one_prefixed_line_exit_2(args, line):
    res = invoke(*args)
    assert (res.exit_code, res.stderr, res.stdout) == (2, f"streamscan: error: {line}\n", "")


def test_debug_works_before_or_after_the_command(tmp_path):
    for args in (["--debug", "status", tmp_path], ["status", tmp_path, "--debug"]):
        res = invoke(*args)
        assert type(res.exception).__name__ == "JournalError"  # the traceback, not the one line
    res = invoke("status", tmp_path)
    assert (
        res.stderr
        == f"streamscan: error: {tmp_path}: no streamscan scan here; run `streamscan run MODEL --out {tmp_path}` first\n"
    )


def test_the_interrupt_line_is_prefixed_and_exits_143_or_130():
    code = "import signal, sys; from streamscan.cli.options import on_signal; on_signal(int(sys.argv[1]), None)"
    for signum, rc in ((15, 143), (2, 130)):
        done = python(code, str(signum))
        assert (done.returncode, done.stderr) == (
            rc,
            "streamscan: interrupted: 0 results kept; rerun the same command to resume\n",
        )


def test_a_failed_run_leaves_no_empty_out_directory(tmp_path):
    only_1d = write_tensors(tmp_path / "norms" / "model.safetensors", {"norm.weight": __import__("torch").ones(8)})
    res = invoke("run", only_1d.parent, "--out", tmp_path / "new" / "out")
    assert res.exit_code == 2 and "no 2-D weight matrices" in res.stderr
    assert not (tmp_path / "new").exists()  # both levels were ours, both empty: gone
    (tmp_path / "mine").mkdir()
    assert invoke("run", only_1d.parent, "--out", tmp_path / "mine").exit_code == 2
    assert (tmp_path / "mine").is_dir()  # it was there before: never removed


def test_creates_removes_only_the_empty_directories_it_made(tmp_path):
    @creates("dest")
    def fails(dest, keep_file=False):
        (Path(dest) / "a").mkdir(parents=True)
        if keep_file:
            (Path(dest) / "a" / "f").write_text("x")
        raise RuntimeError("late failure")

    with pytest.raises(RuntimeError):
        fails(dest=tmp_path / "d1" / "d2")
    assert not (tmp_path / "d1").exists() and tmp_path.is_dir()
    with pytest.raises(RuntimeError):
        fails(dest=tmp_path / "d3", keep_file=True)
    assert (tmp_path / "d3" / "a" / "f").read_text() == "x"


def test_workers_is_one_name_with_the_old_one_kept(sharded_llama, tmp_path):
    for flag, note in (
        ("--workers", ""),
        ("--cpu-workers", "streamscan: --cpu-workers is deprecated; use --workers\n"),
    ):
        out = tmp_path / flag.strip("-")
        res = invoke("run", sharded_llama, "--out", out, "-q", "--devices", "cpu", flag, "2", "--include", "*k_proj")
        assert (res.exit_code, res.stderr) == (0, note)
        assert json.loads((out / "streamscan_summary.json").read_text())["cpu_workers"] == 2
    assert "--workers N" in invoke("metrics", "--help").stdout


def test_without_a_terminal_run_logs_a_progress_line(sharded_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # every result (a few seconds apart in real use)
    res = invoke("run", sharded_llama, "--out", tmp_path / "o")
    assert res.exit_code == 0
    lines = res.stderr.splitlines()
    assert len(lines) == 30 and all(
        re.fullmatch(r"streamscan: \d+/30 matrices \(\d+%\), .*busy: cpu \d+%", x) for x in lines
    )
    assert lines[-1].startswith("streamscan: 30/30 matrices (100%), ")
    assert invoke("run", sharded_llama, "--out", tmp_path / "q", "-q").stderr == ""


def test_rerun_keeps_the_summary_and_the_slug(sharded_llama, tmp_path):
    out = tmp_path / "o"
    assert invoke("run", sharded_llama, "--out", out, "-q", "--name", "org/The_Model", "-p", "25").exit_code == 0
    first = (out / "streamscan_summary.json").read_text()
    files = sorted(p.name for p in out.iterdir())
    res = invoke("run", sharded_llama, "--out", out, "-p", "25")  # no --name: the scan's own names
    assert res.exit_code == 0 and res.stdout.startswith("streamscan: nothing left to scan: 30 matrices")
    assert sorted(p.name for p in out.iterdir()) == files and "snr_results_org-The-Model.json" in files
    assert (out / "streamscan_summary.json").read_text() == first
    assert json.loads(first)["run"]["devices"]


def test_inspect_lists_in_natural_order_with_a_calibrated_estimate(tmp_path):
    model = write_llama(tmp_path / "deep", LlamaShape(layers=11, hidden=16, ffn=32, kv=8, vocab=32))
    res = invoke("inspect", model, "--include", "*q_proj", "--workers", "2")
    scored = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("score")]
    assert scored == [f"model.layers.{i}.self_attn.q_proj" for i in range(11)]
    flops = 11 * (16 * 16 * 16 + 4 / 3 * 16**3)
    eta = json.loads(invoke("inspect", model, "--include", "*q_proj", "--workers", "2", "--json").stdout)
    assert eta["flops"] == pytest.approx(flops, rel=1e-12)
    expected = overview.START_SECONDS + flops / (overview.CPU_FLOPS_PER_WORKER * 2)
    assert eta["eta_seconds"]["cpu x2"] == pytest.approx(expected, rel=1e-12)


@pytest.fixture
def scan(sharded_llama, tmp_path):
    out = tmp_path / "scan"
    assert invoke("run", sharded_llama, "--out", out, "-q", "-p", "25").exit_code == 0
    return out


def yaml_count(path: Path) -> int:
    return sum(line.startswith("- ") for line in path.read_text().splitlines())


def test_report_counts_what_the_yaml_selects_and_repeats_p(scan, tmp_path):
    assert invoke("report", "--out", scan).exit_code == 0
    page = (scan / "report.html").read_text()
    n = yaml_count(scan / "snr_results_tiny-llama_unfrozenparameters_25percent.yaml")
    assert f"; {n} selected (with the embedding and head, as in the YAML). Method: gram64." in page
    res = invoke("report", "--out", scan, "-p", "25", "-p", "50", "--dest", tmp_path / "two")
    assert res.stdout.splitlines() == [str(tmp_path / "two" / f"report_{p}percent.html") for p in (25, 50)]
    for p in (25, 50):
        assert f"(top {p}% marked)" in (tmp_path / "two" / f"report_{p}percent.html").read_text()


def test_compare_a_scan_with_itself_says_none_and_names_the_methods(scan, tmp_path):
    dest = tmp_path / "cmp"
    res = invoke("compare", scan, scan, "--dest", dest)
    assert res.stdout.splitlines() == [str(dest / "compare.csv"), str(dest / "compare.html")]
    page = (dest / "compare.html").read_text()
    assert page.count('<p class="note">None: no module changed here.</p>') == 2
    assert "<p>Method: A gram64, B gram64.</p>" in page
    rows = list(__import__("csv").DictReader((dest / "compare.csv").open()))
    embed = next(r for r in rows if r["name"] == "model.embed_tokens")
    assert (embed["selected_a"], embed["selected_b"], embed["method_a"]) == ("True", "True", "gram64")
    n = yaml_count(scan / "snr_results_tiny-llama_unfrozenparameters_25percent.yaml")
    assert sum(r["selected_a"] == "True" for r in rows) == n
    two = invoke("compare", scan, scan, "--dest", tmp_path / "two", "-p", "10", "-p", "50")
    assert [Path(p).name for p in two.stdout.split()] == [
        "compare_10percent.csv", "compare_10percent.html", "compare_50percent.csv", "compare_50percent.html"
    ]  # fmt: skip


HIST = """
const {H, script} = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const box = {}; global.document = {getElementById: id => id === 'hist-data' ? {textContent: JSON.stringify(H)}
  : id === 'hist' ? box : null};
eval(script); const out = {};
for (const name of Object.keys(H)) { drawHist(name);
  out[name] = [...box.innerHTML.matchAll(/<text x="([\\d.]+)" y="240" text-anchor="(\\w+)">([^<]*)</g)].map(m => [+m[1], m[2], m[3]]); }
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_histogram_ticks_are_whole_decades_inside_the_plot():
    from streamscan.results.report import _SCRIPT

    hist = {"wide": [-2.3, 3.6, None, 1, 2, 3], "narrow": [0.1, 0.6, None, 1, 2, 3]}
    done = subprocess.run(["node", "-e", HIST], input=json.dumps({"H": hist, "script": _SCRIPT}), capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    ticks = json.loads(done.stdout)
    assert [t[2] for t in ticks["wide"]] == ["1e-2", "1e-1", "1e0", "1e1", "1e2", "1e3"]
    assert [t[2] for t in ticks["narrow"]] == ["1.3e+0", "2.2e+0", "4.0e+0"]
    assert ticks["narrow"][-1][:2] == [888, "end"] and ticks["narrow"][0][:2] == [56, "start"]  # not clipped


def test_streamscan_variables_are_read_at_the_edge_into_scan_options():
    from streamscan.cli.process import SCAN_VARIABLES, scan_settings
    from streamscan.errors import UsageError
    from streamscan.records import ScanOptions

    fields = set(ScanOptions.names())
    env = {"STREAMSCAN_COMMIT_RECORDS": "1", "STREAMSCAN_THREADS_PER_JOB": " 4 ", "OTHER": "x"}
    expected = {f: kind(env[v].strip()) for v, (f, kind, _) in SCAN_VARIABLES.items() if v in env and f in fields}
    assert scan_settings(env) == expected
    if "commit_records" in fields:
        with pytest.raises(UsageError, match=r"^STREAMSCAN_COMMIT_RECORDS=many: not a int; unset it or correct it$"):
            scan_settings({"STREAMSCAN_COMMIT_RECORDS": "many"})
    page = (ROOT / "docs" / "cli.md").read_text()
    assert all(f"| `{v}` |" in page for v in SCAN_VARIABLES)


def test_bare_streamscan_shows_the_help():
    res = invoke()
    assert res.exit_code in (0, 2) and res.output.startswith("Usage: streamscan [OPTIONS] COMMAND")
