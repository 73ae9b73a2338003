"""A fixture plugin that fails to import: it needs a module that is not installed
(tests/test_plugins.py)."""

import not_a_module_anywhere  # noqa: F401
