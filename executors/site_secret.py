"""The site's noise secret: 32 random bytes in ``STATE_DIR/site-noise.key`` (mode 0600), made once.

The site derives the noise of each release from it (:mod:`tffprod.privacy.noise`), so the noise is
unpredictable to a coordinator and the identical request gets the identical noise. It never leaves
the site and is never logged. Keep it with the privacy ledger (back them up together): with the
ledger kept and the secret lost, a repeated request, which the ledger does not charge again, would
be noised anew. TF-free.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["SECRET_FILE", "load_or_create"]

SECRET_FILE = "site-noise.key"
_SIZE = 32


def load_or_create(state_dir: os.PathLike | str) -> bytes:
    """The site's secret, created (with ``O_EXCL``, mode 0600) if the state folder has none.

    Raises:
        OSError: the file cannot be read or written, or holds something other than 32 bytes.
    """
    path = Path(state_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) != _SIZE:
            raise OSError(f"{path} holds {len(secret)} bytes, not a {_SIZE}-byte site secret") from None
        return secret
    secret = secrets.token_bytes(_SIZE)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret
