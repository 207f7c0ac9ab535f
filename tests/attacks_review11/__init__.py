"""Review 11: attacks on the consumer socket, the TUF publication and the AMR routes."""
