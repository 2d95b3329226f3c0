from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from .apps import analytics


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    user_id = request.POST["user_id"]
    # Both calls only queue: the view returns without waiting for the Flameup API.
    analytics().identify(user_id, {"email": request.POST.get("email", ""), "plan": "free"})
    analytics().track(user_id, "signed_up", {"plan": "free"})
    return JsonResponse({"user_id": user_id}, status=201)
