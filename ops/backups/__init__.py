"""Backups of everything Darkroom keeps: every service's database and the
object store, encrypted with the operator's key, with a manifest, rotated.

- :mod:`.crypto`: the encrypted file format (AES-256-GCM in chunks).
- :mod:`.sets`: a backup set on disk, its manifest, and rotation.
- :mod:`.sources`: where the databases and the object store are (each
  service's own config file) and how one database is dumped and restored.
- :mod:`.erasures`: the erasure log, and its replay after a restore.
- :mod:`.jobs`: ``run``, ``verify`` and ``restore``, which ``ops/backup.py``
  (``darkroom-ops backup``) calls.
"""
