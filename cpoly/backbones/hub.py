"""Offline-aware access to the Hugging Face Hub.

Without network, `from_pretrained` retries for about 25 seconds before failing (HF_HUB_OFFLINE unset)
and then prints a generic message. We decide up front whether the Hub can be reached (the offline
environment variables, else a TCP connect to the endpoint or proxy bounded to a few seconds), load
with `local_files_only=True` when it cannot, and turn a cache miss into one line that says how to fix
it.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


class BackboneUnavailableError(RuntimeError):
    """The weights cannot be obtained here; the message is one line that says how to fix it."""


def offline_by_env() -> bool:
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """True when a TCP connection to the Hub (or the HTTPS proxy in use) opens within PROBE_TIMEOUT_S.

    Name resolution ignores socket timeouts, so the probe runs in a daemon thread that we stop waiting
    for. Cached for the process: the answer decides how every backbone of the run is loaded.
    """
    proxy = urllib.request.getproxies().get("https")
    url = urllib.parse.urlsplit(proxy if proxy else hub_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                result.append(True)
        except OSError:
            result.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(PROBE_TIMEOUT_S + 0.5)
    return bool(result and result[0])


def hub_offline() -> bool:
    """Whether to load with local_files_only: the offline variables are set or the Hub is unreachable."""
    return offline_by_env() or not hub_reachable()


def looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_cached(model_id: str, revision: str | None = None) -> bool:
    """Whether the repo's config.json is in the local Hugging Face cache (weights are checked on load)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    return isinstance(found, str)


def unavailable_message(backbone_name: str, model_id: str) -> str:
    reason = "HF_HUB_OFFLINE=1" if offline_by_env() else f"{hub_endpoint()} is unreachable"
    return (
        f"backbone {backbone_name}: {model_id!r} is not in the local Hugging Face cache ({hub_cache_dir()}) "
        f"and {reason}; run once with network to download it, or set backbone.model_id to a local directory"
    )
