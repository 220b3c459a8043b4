"""Fixtures shared by the verdict tests that drive real retry libraries."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest

from pytest_resilience.config import settings_key


@pytest.fixture
def seeded_random(request: pytest.FixtureRequest) -> Iterator[int]:
    """backoff and stamina draw jitter from the global ``random``: seed it from the plugin."""
    seed = request.config.stash[settings_key].seed
    state = random.getstate()
    random.seed(seed)
    try:
        yield seed
    finally:
        random.setstate(state)


@pytest.fixture
def quiet_backoff_logger() -> Iterator[None]:
    """backoff sets its logger to INFO on import; keep its retry lines out of the output."""
    logger = logging.getLogger("backoff")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
