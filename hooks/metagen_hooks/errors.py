"""The errors metagen raises on purpose, in the contract so that a plugin (a host above all)
raises the same classes metagen catches and reports, without importing metagen-plugins.

Which to raise: :class:`ConfigError` for a configuration that cannot work (a bad ``[host]``
setting, a component this host cannot run), before anything loads; :class:`HostError` for what
the engine cannot do or did not do (no server, a missing dependency, a request that failed);
:class:`PluginError` for a plugin's own failure to load or build. ``metagen_hooks.BudgetExceeded``
is not an error of this family: a host raises it when the budget allows no further generation
(``Budget.allow`` does that for it), and strategies end on it.
"""


class MetagenError(Exception):
    """Base of every error metagen raises on purpose."""


class ConfigError(MetagenError, ValueError):
    """The configuration is invalid; raised before any model loads."""


class PluginError(MetagenError):
    """A plugin failed to load, register, or build a component."""


class HostError(MetagenError):
    """A host cannot do what the configuration asks (missing model, engine, or support)."""
