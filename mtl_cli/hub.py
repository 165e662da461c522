"""The Hugging Face Hub: is it reachable, or has the user asked for offline mode?

The Hub clients retry for up to a minute before failing, so the loaders ask here first and
fail at once with the offline alternative.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub's host (HF_ENDPOINT if set)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline_mode() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
