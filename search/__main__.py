import signal

from search.cli.main import main

code = main()
# A Ctrl-C that lands after main returned (the run already stopped on the first one) must not
# turn the exit code into a death by SIGINT while the interpreter shuts down.
signal.signal(signal.SIGINT, signal.SIG_IGN)
raise SystemExit(code)
