"""The checkpoint store: everything about a checkpoint root that needs no torch.

Owns the on-disk format (:mod:`.layout` names and markers, :mod:`.files` atomic writes and
``latest``), the scan of a root (:mod:`.catalog`, with its private walk and scan cache), the pure
retention policy (:mod:`.retention`, and the decisions it makes, as data: :mod:`.decisions`),
deletion under the root's lock (:mod:`.collect`, with the private lock and trash modules), a
training process's retention (:mod:`.background`: a light scan and renames on the training
thread, the trash emptied by a background thread; the private ``_retire`` and ``_emptier`` hold
the two halves), which root, checkpoint and config a command means (:mod:`.selection`), and the
forecast of a whole run (:mod:`.simulate`).

May import: the standard library, :mod:`kempnerforge.config` and :mod:`kempnerforge.errors`.
Never torch, and nothing from the manager, export or CLI packages: ``kf-ckpt ls`` and ``gc``
run from cron and must start in well under a second. This ``__init__`` imports nothing, so
importing one store module costs only that module.
"""
