"""Figure helpers, one module per notebook topic, so that notebooks stay a few lines each."""
