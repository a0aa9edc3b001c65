"""Running the server: startup and shutdown, worker processes, the daemon, metrics."""
