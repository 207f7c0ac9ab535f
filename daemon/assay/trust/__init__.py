"""The TUF repository the registry publishes for its trusted set (see docs/trust.md)."""
