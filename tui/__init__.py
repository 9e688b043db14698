"""carmesh admin console: a Textual app that talks only to the daemon's control API."""
