from kerasio.cli import entry

entry()
