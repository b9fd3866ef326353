"""``kf-ckpt``: the command line of the checkpoint toolkit (thin shells over the library).

``main`` is the entry point (lazy subcommands, errors mapped to exit codes); each command module
parses its options, selects the root and config (:mod:`kempnerforge.checkpoint.store.selection`),
calls the library and echoes what its view in :mod:`kempnerforge.cli.render` renders;
``_options`` holds the options several commands share.
"""

__all__: list[str] = []
