"""The Bedrock and Vertex clients go through the guard, against the fake server's platform paths.

Credentials are fake: Bedrock signs each request with SigV4 (botocore, locally) and decodes
the AWS event-stream framing the fake server sends; Vertex takes an access token as given.
Both point `base_url` at the fake server, which routes their paths (`/model/{model}/invoke...`,
`...:rawPredict` / `:streamRawPredict`) to the same answers and faults as `/v1/messages`.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import Seen, assert_one_clean_message

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("guard")]

MODEL = "anthropic.claude-test-v1:0"
ARGS: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
PATHS = {
    "bedrock": {
        False: f"/model/{MODEL}/invoke",
        True: f"/model/{MODEL}/invoke-with-response-stream",
    },
    "vertex": {
        False: f"/projects/proj/locations/us-east5/publishers/anthropic/models/{MODEL}:rawPredict",
        True: f"/projects/proj/locations/us-east5/publishers/anthropic/models/{MODEL}"
        ":streamRawPredict",
    },
}
BEFORE_CONTENT = {
    "reset": faults.reset_after(2),
    "overloaded": faults.sse_error_after(2),
    "silent": faults.stall_after(2),
}


@pytest.fixture(params=sorted(PATHS))
def platform(request: pytest.FixtureRequest) -> str:
    if request.param == "bedrock":
        pytest.importorskip("botocore", reason="Bedrock's client needs botocore")
    return str(request.param)


def _client(platform: str, server: FakeAnthropic) -> Any:
    if platform == "bedrock":
        return anthropic.AnthropicBedrock(
            aws_access_key="AKIDFAKEFAKEFAKE",
            aws_secret_key="fake-secret",
            aws_region="us-east-1",
            base_url=server.url,
        )
    return anthropic.AnthropicVertex(
        region="us-east5", project_id="proj", access_token="fake-token", base_url=server.url
    )


@pytest.mark.parametrize("fault", sorted(BEFORE_CONTENT))
@pytest.mark.parametrize("mode", ["create", "create_stream", "stream_events"])
def test_a_fault_before_content_is_recovered(
    server: FakeAnthropic, platform: str, mode: str, fault: str
) -> None:
    if mode == "create" and fault == "silent":
        pytest.skip("a plain call keeps the SDK's read timeout (README, Policy)")
    server.script(BEFORE_CONTENT[fault], faults.ok())
    client = _client(platform, server)
    if mode == "create":
        seen = Seen(message=client.messages.create(**ARGS))
    elif mode == "create_stream":
        with client.messages.create(**ARGS, stream=True) as stream:
            seen = Seen(events=[(e.type, e.to_dict()) for e in stream])
    else:
        with client.messages.stream(**ARGS) as helper:
            types = [e.type for e in helper]
            seen = Seen(message=helper.get_final_message(), stream_events=types)
    assert_one_clean_message(seen, server.sent[1])
    stream = mode != "create"
    assert [r.path for r in server.requests] == [PATHS[platform][stream]] * 2
    assert {r.platform for r in server.requests} == {platform}
    if platform == "bedrock" and stream:
        assert server.sent[1].headers["content-type"] == "application/vnd.amazon.eventstream"


def test_a_failure_after_content_raises_stream_interrupted(
    server: FakeAnthropic, platform: str
) -> None:
    server.script(faults.reset_after(5))
    client = _client(platform, server)
    with (
        pytest.raises(sdkguard.StreamInterrupted) as raised,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    assert raised.value.partial_message is not None
    assert raised.value.partial_message.content[0].text == server.sent[0].text
    assert len(server.requests) == 1


def test_an_error_event_that_is_final_is_raised_at_once(
    server: FakeAnthropic, platform: str
) -> None:
    # Bedrock sends it as a `validationException` frame: not retried, as invalid_request_error.
    server.script(faults.sse_error_after(2, error_type="invalid_request_error"))
    client = _client(platform, server)
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    assert raised.value.status_code == 200
    assert len(server.requests) == 1


def test_count_tokens_on_vertex_is_guarded(server: FakeAnthropic) -> None:
    server.script(faults.status(529))
    client = _client("vertex", server)
    counted = client.messages.count_tokens(model=MODEL, messages=ARGS["messages"])
    assert counted.input_tokens > 0
    assert [r.path for r in server.requests] == [
        "/projects/proj/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    ] * 2
