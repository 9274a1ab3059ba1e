"""``python -m dicom_ai.cli``: the ``dicom-ai`` command."""

import sys

from dicom_ai.cli import app

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
