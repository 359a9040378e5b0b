"""The toy world: a small synthetic bird world in which the whole pipeline runs offline."""
