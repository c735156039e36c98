from vaerun.cli import run

run()
