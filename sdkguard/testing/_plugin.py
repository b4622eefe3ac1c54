"""pytest plugin (entry point `pytest11`): the `fake_anthropic` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sdkguard.testing import FakeAnthropic


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A started `FakeAnthropic` server, stopped after the test.

    Point a client at it with `anthropic.Anthropic(base_url=fake_anthropic.url, api_key="test")`
    and script answers with `fake_anthropic.script(...)`.
    """
    # Imported here: the plugin loads in every pytest session of an environment with sdkguard.
    from sdkguard.testing import FakeAnthropic

    with FakeAnthropic() as server:
        yield server
