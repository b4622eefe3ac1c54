"""Print the Phoenix URL of the trace of one retried call made by `sdkguard demo --otlp`.

    python trace_url.py --phoenix http://127.0.0.1:6006 --project sdkguard-demo \
        --reason status_529

Asks Phoenix's REST API for the project's spans (Phoenix stores what it receives a moment
later, so this polls until --wait runs out) and picks a trace whose root, the call span, ended
OK with exactly two `sdkguard.attempt` children, the first a retry for --reason. The URL opens
that trace with the first attempt selected. Standard library only; exits 1 when there is none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def spans(phoenix: str, project: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        name = urllib.parse.quote(project, safe="")
        page = get(f"{phoenix}/v1/projects/{name}/spans?{urllib.parse.urlencode(query)}")
        found.extend(page["data"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return found


def retried_call(all_spans: list[dict[str, Any]], reason: str) -> dict[str, Any] | None:
    """The first attempt span of a call that was retried once for `reason`, then succeeded."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in all_spans:
        by_trace[span["context"]["trace_id"]].append(span)
    for trace_spans in by_trace.values():
        roots = [s for s in trace_spans if not s.get("parent_id")]
        if len(roots) != 1 or roots[0]["status_code"] != "OK":
            continue
        root_id = roots[0]["context"]["span_id"]
        attempts = sorted(
            (
                s
                for s in trace_spans
                if s["name"] == "sdkguard.attempt" and s.get("parent_id") == root_id
            ),
            key=lambda s: s["attributes"].get("http.request.resend_count", 0),
        )
        if len(attempts) != 2:
            continue
        first = attempts[0]["attributes"]
        if first.get("sdkguard.outcome") == "retry" and first.get("sdkguard.reason") == reason:
            return attempts[0]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phoenix", default="http://127.0.0.1:6006")
    parser.add_argument("--project", default="sdkguard-demo")
    parser.add_argument("--reason", default="status_529", help="sdkguard.reason of the retry")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to poll for it")
    args = parser.parse_args()
    phoenix = args.phoenix.rstrip("/")
    deadline = time.monotonic() + args.wait
    while True:
        projects = {p["name"]: p["id"] for p in get(f"{phoenix}/v1/projects")["data"]}
        attempt = None
        if args.project in projects:
            attempt = retried_call(spans(phoenix, args.project), args.reason)
        if attempt is not None:
            break
        if time.monotonic() > deadline:
            print(
                f"trace_url.py: no retried call ({args.reason}) in project {args.project!r}",
                file=sys.stderr,
            )
            return 1
        time.sleep(1.0)
    trace_id = attempt["context"]["trace_id"]
    selected = urllib.parse.urlencode({"selectedSpanNodeId": attempt["id"]})
    print(f"{phoenix}/projects/{projects[args.project]}/traces/{trace_id}?{selected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
