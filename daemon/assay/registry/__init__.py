"""The trust registry: artifacts, states, promotion policy, store and HTTP API."""
