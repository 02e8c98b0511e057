"""The command-line verbs: run, status, check-config, fake-server."""
