"""The errors metagen raises. Each message names what failed (plugin, component, parameter)
and what to do about it. The classes are the contract's (:mod:`metagen_hooks.errors`, so a plugin
raises them without importing metagen-plugins), the same objects under their old names here."""

from metagen_hooks.errors import ConfigError, HostError, MetagenError, PluginError

__all__ = ["ConfigError", "HostError", "MetagenError", "PluginError", "did_you_mean", "nearest"]


def nearest(word: object, options) -> str | None:
    """The option closest to ``word`` (a likely typo of it), or None: the "did you mean" of every
    message that rejects a name."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(word: object, options) -> str:
    """``"did you mean 'x'? "`` for the nearest option, or nothing when none is close."""
    close = nearest(word, options)
    return f"did you mean {close!r}? " if close else ""
