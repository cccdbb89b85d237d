"""routing's own pure rules (the routing rules themselves are services.policy): no I/O."""
