"""Stand-ins for modules that only exist inside Triton (for unit tests without a server)."""
