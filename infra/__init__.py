"""Running Switchboard: settings, bus clients, the embedded stack, the CLI and deployment files."""
