from latentsweep.cli import entry

entry()
