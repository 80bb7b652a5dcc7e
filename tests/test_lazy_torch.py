"""merge and inspect never load torch (importing it is ~2 s of their ~5 s at 70k matrices)."""

import subprocess
import sys


def test_merge_and_inspect_paths_do_not_import_torch():
    code = (
        "import sys; from streamscan.cli.commands import main; from streamscan.api import merge; "
        "from streamscan.api import inspect_model; from streamscan.results.overview import overview; "
        "from streamscan.compute.devices import default_workers; default_workers(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
