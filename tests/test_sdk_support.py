"""An SDK that sdkguard cannot guard is left exactly as it is, with one warning, never a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator

import anthropic
import pytest
import wrapt
from anthropic import _base_client

import sdkguard
from sdkguard import _patch, _sdk
from sdkguard._sdk import http
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import API_KEY, MESSAGE_ARGS

pytestmark = pytest.mark.timeout(30)

CLIENT_CLASSES = (_base_client.SyncAPIClient, _base_client.AsyncAPIClient)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No guard installed, and no SDK refused yet in this process."""
    sdkguard.uninstall()
    monkeypatch.setattr(_patch._state, "refused", None)
    yield
    sdkguard.uninstall()


def _untouched() -> bool:
    return not any(
        isinstance(value, wrapt.FunctionWrapper)
        for owner in CLIENT_CLASSES
        for value in vars(owner).values()
    )


@pytest.mark.usefixtures("fresh")
@pytest.mark.parametrize("version", ["0.92.0", "0.40.0", "3.0.0", "3.1.0a1"])
def test_an_unsupported_version_is_left_alone_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, server: FakeAnthropic, version: str
) -> None:
    monkeypatch.setattr(anthropic, "__version__", version)
    with pytest.warns(RuntimeWarning, match=rf"anthropic {version} is not supported") as warned:
        sdkguard.install()
    assert len(warned) == 1
    assert _untouched() and not sdkguard.is_installed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdkguard.install(max_attempts=3)  # once per process: no second warning
    assert _untouched()
    # The SDK behaves as without sdkguard: a stream reset reaches the caller raw.
    server.script(faults.reset_after(2))
    with (
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client,
        pytest.raises(http.ReadError),
    ):
        list(client.messages.create(**MESSAGE_ARGS, stream=True))
    assert len(server.requests) == 1


@pytest.mark.usefixtures("fresh")
def test_internals_that_moved_leave_the_sdk_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    # A future release whose stream class lost `close`: the request patches already applied
    # are rolled back, and install() says so instead of raising.
    from anthropic import _streaming

    monkeypatch.delattr(_streaming.Stream, "close")
    with pytest.warns(RuntimeWarning, match="cannot patch this anthropic SDK") as warned:
        sdkguard.install()
    assert len(warned) == 1 and "KeyError" in str(warned[0].message)
    assert _untouched() and not sdkguard.is_installed()


@pytest.mark.usefixtures("fresh")
def test_a_supported_version_is_patched() -> None:
    assert _sdk.unsupported() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdkguard.install()
    assert not _untouched() and sdkguard.is_installed()


def test_at_interpreter_start_an_unsupported_sdk_never_breaks_the_program(
    server: FakeAnthropic,
) -> None:
    # install() before anthropic is imported: the refusal happens inside `import anthropic`.
    script = textwrap.dedent(
        f"""
        import sdkguard, sdkguard._version
        sdkguard._version.ANTHROPIC_REQUIREMENT = "anthropic >= 99"  # none is supported
        sdkguard.install()
        import anthropic
        print(sdkguard.is_installed())
        with anthropic.Anthropic(base_url={server.url!r}, api_key="k") as client:
            print(client.messages.create(**{MESSAGE_ARGS!r}).content[0].text)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False", faults.DEFAULT_TEXT]
    assert result.stderr.count("is not supported (sdkguard supports anthropic >= 99)") == 1
