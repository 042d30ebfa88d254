"""schemathesis hooks for idemq (loaded through schemathesis.toml).

`Idempotency-Key` names one request: a client sends a new key for every new
request, and a key sent again with another request is refused (422
idempotency-key-reused, documented). OpenAPI cannot say "unique per
request", and generated cases repeat keys across bodies and routes (the
coverage phase uses one key for all its cases). So every *valid* generated
key is replaced by a fresh one before the call; invalid keys (the negative
cases: empty, too long, bad characters) are sent as generated, and a
missing key stays missing.
"""

import re
import uuid

import schemathesis

KEY = "Idempotency-Key"


def _key_pattern(case):
    for parameter in case.operation.headers:
        if parameter.name == KEY:
            return parameter.definition.get("schema", {}).get("pattern")
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    key = headers.get(KEY)
    pattern = _key_pattern(case)
    if isinstance(key, str) and pattern and re.search(pattern, key):
        headers[KEY] = f"st-{uuid.uuid4().hex}"
        case.headers = headers
