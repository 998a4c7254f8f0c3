from latentsweep.cli import main

main()
