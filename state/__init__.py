"""State (installed as ``servectl.state``): the recorded state documents and the stores that keep them.

``document`` is the versioned state file's data (``version``, ``serial``,
``lineage``, resources with their live identifiers; upgraded one function per
old version, as Terraform's states); ``store`` the interface every store
offers (read, atomic write, lock with ``locked()``, history), with ``local``
(``servectl.state.json``) and ``s3`` (S3 with a lock object) behind it and
``locate`` choosing between them; ``history`` the applied versions rollback
returns to. Reading a state never loads the config language: ``document``
sits in the model layer, the stores above planning.
"""
