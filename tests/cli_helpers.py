"""What the CLI tests share: running a command through click's runner, the one-line error check, the outputs."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from streamscan.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *fragments):
    """Exit 2 with one line, `streamscan: error: …`, holding every fragment: no traceback, nothing 'unexpected'."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamscan: error:"), result.output
    assert "Traceback" not in result.output and "unexpected" not in lines[0], result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def outputs(out: Path) -> dict[str, bytes]:
    """The Spectrum outputs of a scan directory, name -> bytes (to compare runs byte for byte)."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("snr_results_*"))}
