"""Schemathesis checks for raftlord's fuzz test (loaded through SCHEMATHESIS_HOOKS).

`druid_error_shape`: every 4xx answer is JSON with a reason where Druid's clients read it
(`errorMessage`, else `error`), and every answer's status is counted into the JSON file that
RAFTLORD_FUZZ_COUNTS names.
"""
import json
import os

import schemathesis

_counts = {}


def _record(status):
    _counts[str(status)] = _counts.get(str(status), 0) + 1
    path = os.environ.get("RAFTLORD_FUZZ_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(_counts, f)


@schemathesis.check
def druid_error_shape(ctx, response, case):
    _record(response.status_code)
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except Exception:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.text[:200]!r}")
    reason = None
    if isinstance(body, dict):
        reason = body.get("errorMessage") or body.get("error")
    if not isinstance(reason, str) or not reason or reason == "druidException":
        raise AssertionError(f"{response.status_code} without a reason in Druid's error shape: {body!r}")
    return None
