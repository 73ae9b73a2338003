"""metagen-plugins' engines, each one package: its host, its deployment tooling and what it
needs of its own, registered as a plugin like any outside engine."""
