import os
import sys

try:
    from streamscan.cli import main
except KeyboardInterrupt:  # Ctrl-C while starting: nothing ran yet
    sys.stderr.write("interrupted: 0 results kept; rerun the same command to resume\n")
    os._exit(130)

main(prog_name="streamscan")
