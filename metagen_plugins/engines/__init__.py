"""The engines metagen-plugins ships, one package each, each loaded as its own built-in plugin
(``metagen_plugins.plugins`` finds them here): its host, its realisations of the built-in
components, its deployment tooling and its command, so adding or removing an engine touches one
folder. Each builds on the host kit (``metagen_plugins.hostkit``); none imports another.
"""
