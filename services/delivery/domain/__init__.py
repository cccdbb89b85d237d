"""delivery's pure rules (what a decision issues and how, the 好差评 statistics' terms): no I/O."""
