"""report.html for any model, opened in a real headless Chromium: no console errors, a screenshot."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import streamscan
from tests.results.test_published import published

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("STREAMSCAN_SCREENSHOTS", tempfile.gettempdir())) / "streamscan-report-shots"


def chromium(page: Path, shot: Path, height: int = 2000) -> str:
    """Load PAGE in headless Chromium at 1400 px wide, save a screenshot; return the console log lines."""
    profile = tempfile.mkdtemp()
    try:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--window-size=1400,{height}",
             f"--screenshot={shot}", "--virtual-time-budget=5000", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert shot.is_file() and shot.stat().st_size > 1000, proc.stderr[-2000:]
    return "\n".join(line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_the_console_check_catches_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<html><body><script>console.error("boom"); undefinedFn();</script>x</body></html>')
    console = chromium(page, tmp_path / "bad.png", 400)
    assert "boom" in console and "undefinedFn" in console


def test_report_of_a_dense_scan_has_every_section(single_llama, tmp_path):
    out = tmp_path / "scan"
    streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
    paths = streamscan.report(out)
    assert [p.name for p in paths] == ["report.html"]
    text = paths[0].read_text()
    assert "SNR by depth per type" in text and "mlp.down_proj" in text
    assert "alpha by depth" in text and 'id="hist-data"' in text and "MoE experts" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # self-contained: nothing fetched


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("kind", ["dense", "dsv2"])
def test_report_renders_in_chromium_without_console_errors(kind, single_llama, tmp_path):
    if kind == "dense":
        out = tmp_path / "scan"
        streamscan.scan(single_llama, out, devices="cpu", cpu_workers=1)
        page = streamscan.report(out)[0]
    else:  # DeepSeek-V2's published scan: 59 layers x 160 experts
        page = streamscan.report(published("dsv2"), dest=tmp_path / "dsv2")[0]
    SHOTS.mkdir(parents=True, exist_ok=True)
    console = chromium(page, SHOTS / f"report-{kind}.png")
    assert console == "", console  # the page logs nothing; any console line (an error included) fails
