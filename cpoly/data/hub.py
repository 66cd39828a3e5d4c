"""The Hugging Face Hub as the last data source: used only when no local folder holds the data and the
process is online. The schema conversions live next to each benchmark (`superni_sources.tasks_from_hub_rows`,
`superglue_tasks.records_from_hub_rows`) so they are tested on tiny fixtures without any network.
"""

from __future__ import annotations

import os
from typing import Any

from cpoly.data.io import DataError

_TRUE = {"1", "true", "yes", "on"}


def hub_is_offline() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE asks for offline mode."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def require_online(benchmark: str, looked_for: str, dataset_id: str) -> None:
    """Raise the one-line error that says what to set when local data is absent and the Hub is off limits."""
    if hub_is_offline():
        raise DataError(
            f"no local {benchmark} data ({looked_for}) and the Hub is disabled (HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE is set): set CPOLY_DATA_DIR (or paths.data_dir) to a folder with the data "
            f"(see docs/benchmarks.md), or unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE to download "
            f"{dataset_id!r} from the Hub"
        )


def load_hub_rows(dataset_id: str, split: str, config: str | None = None) -> list[dict[str, Any]]:
    """All rows of one split of a Hub dataset as plain dicts."""
    import datasets  # imported here: loading local data never needs it

    try:
        dataset = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # noqa: BLE001 - re-raised with the dataset named
        where = f"{dataset_id!r}" + (f" config {config!r}" if config else "") + f" split {split!r}"
        raise DataError(f"could not load {where} from the Hugging Face Hub: {err}") from err
    return [dict(row) for row in dataset]
