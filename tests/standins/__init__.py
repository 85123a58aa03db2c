"""Stand-ins for the services the tests cannot run (see README.md in this folder)."""
