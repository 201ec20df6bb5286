"""Jobs: each command's work, written once, for the CLI, the app and Python alike.

A job is built from options and paths; ``check()`` runs every check that needs no model (outputs,
suffixes, frame selection, query points, naming rules); ``run(source, progress)`` computes with a
:class:`~dinofeat.features.source.FeatureSource`, writes its files atomically and returns the typed
result.
"""
