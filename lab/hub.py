"""The Hugging Face Hub: is it there, and what to do when it is not.

    python -m lab.hub    # while online: cache bert-base-uncased and GLUE MRPC, SST-2, CoLA for offline use later

Students work online (the Hub serves ``bert-base-uncased`` and ``nyu-mll/glue``), in
classrooms with flaky Wi-Fi, or offline. ``hub_available`` asks the Hub once per process,
with a bounded wait, and switches the whole process to offline mode when it does not answer,
so that later loads read the local cache instead of waiting again.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

DEFAULT_MODEL = "bert-base-uncased"
_HUB_STATE: dict[str, bool] = {}


def _go_offline() -> None:
    """Switch huggingface_hub, transformers and datasets to offline mode for this process."""
    import huggingface_hub.constants as hub_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def hub_available(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers; decided once per session.

    Respects ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``/``TRANSFORMERS_OFFLINE``.
    When the Hub does not answer within ``timeout`` seconds the whole process
    goes offline, so later calls read the local cache instead of retrying.
    """
    if "up" in _HUB_STATE:
        return _HUB_STATE["up"]
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    if any(os.environ.get(f, "").upper() in {"1", "ON", "YES", "TRUE"} for f in flags):
        up = False
    else:
        import urllib.request

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        result: list[bool] = []

        def probe() -> None:
            try:
                urllib.request.urlopen(f"{endpoint}/api/models/{DEFAULT_MODEL}", timeout=timeout)
                result.append(True)
            except Exception:
                result.append(False)

        # A thread bounds the wait even when name resolution hangs (flaky Wi-Fi).
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        up = bool(result and result[0])
    if not up:
        _go_offline()
    _HUB_STATE["up"] = up
    return up


@contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers/datasets logging and progress bars inside the block."""
    import datasets
    import transformers

    t_level, d_level = transformers.logging.get_verbosity(), datasets.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(t_level)
        datasets.logging.set_verbosity(d_level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def prefetch_tasks() -> tuple[str, ...]:
    """The tasks whose data :func:`prefetch` caches: MRPC (01, 02) and those 03 serves beside it."""
    from lab.tasks import SERVED_TASKS

    return ("mrpc", *(t for t in SERVED_TASKS if t != "mrpc"))


def prefetch(model_name: str = DEFAULT_MODEL, tasks: tuple[str, ...] | None = None) -> list[str]:
    """Download ``model_name`` and the tasks' datasets into the Hugging Face cache (needs the Hub once).

    Each dataset is loaded as ``lab.data`` loads it from the Hub: the task spec's ``hub_id`` and
    ``hub_config`` (``lab.tasks``).

    Args:
        model_name: the model to cache.
        tasks: names in ``lab.tasks.TASKS``; None: :func:`prefetch_tasks` (MRPC, SST-2, CoLA).

    Returns:
        The titles of the tasks cached, e.g. ``["MRPC", "SST-2", "CoLA"]``.
    """
    from lab.tasks import get_task

    specs = [get_task(t) for t in (prefetch_tasks() if tasks is None else tasks)]  # unknown names fail first
    if not hub_available():
        raise RuntimeError(
            "The Hugging Face Hub does not answer, so nothing can be prefetched. Connect to the "
            "internet and run this again (or use BITFIT_DATA_DIR / BITFIT_DATA_ROOT and the offline model)."
        )
    import datasets
    from huggingface_hub import snapshot_download

    snapshot_download(model_name, allow_patterns=["*.json", "*.txt", "*.safetensors"])
    for spec in specs:
        datasets.load_dataset(spec.hub_id, spec.hub_config)
    return [spec.title for spec in specs]


def main() -> int:
    """``python -m lab.hub``: prefetch, or say why not (exit code 1)."""
    try:
        titles = prefetch()
    except RuntimeError as err:
        print(err)
        return 1
    print(f"cached: {DEFAULT_MODEL} and GLUE {', '.join(titles)}; later loads read them even without a network")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
