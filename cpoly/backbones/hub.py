"""Offline-aware access to the Hugging Face Hub.

Without network, `from_pretrained` retries for about 25 seconds before failing (HF_HUB_OFFLINE unset)
and then prints a generic message. We decide up front whether the Hub can be reached (the offline
environment variables, else one HTTP request bounded to a few seconds), load with
`local_files_only=True` when it cannot, and turn a cache miss into one line that says how to fix it.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.error
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
    """True when the Hub answers an HTTP request (any status) within PROBE_TIMEOUT_S.

    An HTTP answer, not a TCP connect: sandboxes and captive networks accept connections they never
    serve. urllib follows the usual proxy variables. Name resolution ignores timeouts, so the probe
    runs in a daemon thread that we stop waiting for. Cached for the process: the answer decides how
    every backbone of the run is loaded.
    """
    result: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(hub_endpoint() + "/api/whoami-v2", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
                result.append(True)
        except urllib.error.HTTPError:  # 401 and friends: the Hub answered
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
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
