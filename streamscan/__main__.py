from streamscan.cli import main

main(prog_name="streamscan")
