"""AWS Lambda (and other serverless runtimes that freeze the process between invocations).

Handler setting: lambda_handler.handler. Set FLAMEUP_API_KEY (and FLAMEUP_WORKSPACE_ID) in the
function's environment. See docs/runtimes/serverless.md.
"""

from __future__ import annotations

from typing import Any

import flameup_analytics as fa

# At module level: created once per execution environment and reused by every warm invocation,
# with its pooled keep-alive connections.
client = fa.Client()


# The runtime freezes the process as soon as the handler returns, so the background worker
# cannot deliver in between, and a frozen environment may be discarded without any exit hook
# running. flush_after delivers before the handler returns; the timeout bounds what analytics
# adds to the invocation's billed time, and whatever misses it is spooled (in /tmp on Lambda)
# and delivered by a later invocation.
@client.flush_after(timeout=2)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user_id = event["user_id"]
    client.track(
        user_id,
        "report_requested",
        {"report": event.get("report", "weekly"), "request_id": context.aws_request_id},
    )
    return {"statusCode": 202, "body": f"report queued for {user_id}"}
