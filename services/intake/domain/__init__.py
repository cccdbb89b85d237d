"""intake's own pure rules (what it refuses at once, who may act on a case, how events move
its status; the catalog rules themselves are services.policy): no I/O."""
