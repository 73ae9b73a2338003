"""metagen's tests, one folder for each room of the code (docs/architecture.md, "Tests mirror the code");
the core's tests at the top. A package, so tests import each other's helpers by package path."""
