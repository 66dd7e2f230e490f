from glitches.cli import run

run()
