"""segue.daemon: the long-running engine and the `segue` command line."""
