"""servectl's own code as the AWS nodes receive it: the node agent runs from this zip (``agent_key`` is its digest,
so a new servectl rolls the launch template and the nodes boot with it)."""
from __future__ import annotations

import io
import os
import zipfile

from servectl.loading.bundle import FIXED_TIME


def freeze_servectl() -> bytes:
    """servectl's own packages, every subpackage included, as an importable zip (``servectl/...`` at its top) for
    nodes that do not have it.

    Read from where the packages were imported, so an editable checkout (whose
    ``providers/`` and ``state/`` install under ``servectl.``) and an installed
    wheel give the same layout; fixed timestamps keep the digest stable.
    """
    import servectl.providers
    import servectl.state
    import servectl.version

    # The top-level folders that install under servectl.* are walked as their own roots; the walk of servectl/
    # skips caches only (providers/ and state/ are not inside it in a checkout, and are in a wheel: one each way).
    roots = [("servectl/providers", list(servectl.providers.__path__)[0]), ("servectl/state", list(servectl.state.__path__)[0]),
             ("servectl", os.path.dirname(os.path.abspath(servectl.version.__file__)))]
    written: set[str] = set()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for prefix, top in roots:
            for directory, subdirectories, files in os.walk(top):
                subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__" and not d.startswith("."))
                relative = os.path.relpath(directory, top)
                for name in sorted(files):
                    if not name.endswith(".py"):
                        continue
                    entry = "/".join(part for part in (prefix, relative, name) if part != ".")
                    if entry in written:  # a wheel's servectl/providers, met again under servectl/
                        continue
                    written.add(entry)
                    info = zipfile.ZipInfo(entry, date_time=FIXED_TIME)
                    info.external_attr = 0o644 << 16
                    with open(os.path.join(directory, name), "rb") as handle:
                        archive.writestr(info, handle.read(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
