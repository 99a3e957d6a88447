"""The monitor: a separate process that serves the app's page faults (see ``server``)."""
