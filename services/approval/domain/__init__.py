"""approval's own pure rules: the review of a case and its legal clock: no I/O."""
