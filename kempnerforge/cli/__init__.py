"""``kf-ckpt``: the command line of the checkpoint toolkit (thin shells over the library)."""

__all__: list[str] = []
