"""The errors metagen raises. Each message names what failed (plugin, component, parameter)
and what to do about it."""


class MetagenError(Exception):
    """Base of every error metagen raises on purpose."""


class ConfigError(MetagenError, ValueError):
    """The configuration is invalid; raised before any model loads."""


class PluginError(MetagenError):
    """A plugin failed to load, register, or build a component."""


class HostError(MetagenError):
    """A host cannot do what the configuration asks (missing model, engine, or support)."""
