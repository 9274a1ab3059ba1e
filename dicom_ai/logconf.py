"""Logging: one line per event, to stderr, with time, process and logger name."""

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (level from ``DICOM_AI_LOG_LEVEL``, default INFO)."""
    level = level or os.environ.get("DICOM_AI_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # a tick still running when the next is due is skipped on purpose (max_instances=1)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # logs every module it copies at INFO
