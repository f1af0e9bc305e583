from __future__ import annotations

import os

from django.conf import settings


def test_it_keeps_its_data_under_the_data_dir() -> None:
    assert str(settings.DATA_DIR) == os.path.realpath(os.environ["PAAS_DATA_DIR"])
