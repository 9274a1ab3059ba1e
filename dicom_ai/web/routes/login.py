"""``/login`` and ``/logout``: starting and ending a session.

Both refuse a request without the form's CSRF token (403). Logging in starts a new session
with a new CSRF token (no session fixation); logging out ends every session of the user.
"""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from dicom_ai.web.auth import Busy, Throttled
from dicom_ai.web.deps import TEMPLATES, WebContext, address, check_csrf, context
from dicom_ai.web.security import same

router = APIRouter()


def login_form(request: Request, next: str, error: str = "", status_code: int = 200,
               headers: dict[str, str] | None = None):
    """The login page, with ``error`` shown; gives the session a CSRF token if it has none."""
    if not request.session.get("csrf"):
        request.session["csrf"] = secrets.token_urlsafe(32)  # login CSRF: the form's own token
    return TEMPLATES.TemplateResponse(request, "login.html", {"next": next, "error": error, "user": None},
                                      status_code=status_code, headers=headers)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, next: str = "/", error: str = ""):
    return login_form(request, next, error)


@router.post("/login", include_in_schema=False)
def login(request: Request, username: str = Form(...), password: str = Form(...), next: str = Form("/"),
          csrf_token: str = Form(""), ctx: WebContext = Depends(context)):
    """A new session for the user: 303 to ``next`` (on this site only); 403 without the login
    form's CSRF token, 401 wrong name or password, 429 throttled, 503 busy."""
    if not same(str(request.session.get("csrf", "")), csrf_token):
        return login_form(request, next, "the login form had expired: please log in again", 403)
    try:
        found = ctx.authn.login(username, password, address(request))
    except Throttled as exc:
        return login_form(request, next, str(exc), 429, {"Retry-After": str(exc.retry_after)})
    except Busy as exc:
        return login_form(request, next, str(exc), 503, {"Retry-After": "1"})
    if found is None:
        return login_form(request, next, "wrong name or password", 401)
    request.session.clear()  # a new session: nothing of the one before login carries over
    request.session.update(uid=found.id, name=found.name, sv=found.session_version,
                           csrf=secrets.token_urlsafe(32), at=time.time())
    local = next.startswith("/") and not next.startswith("//") and "\\" not in next
    return RedirectResponse(next if local else "/", status_code=303)  # never off-site


@router.post("/logout", include_in_schema=False)
def logout(request: Request, csrf_token: str = Form(""), ctx: WebContext = Depends(context)):
    """End the session, and every other session of the same user (its session_version
    goes up); 403 without the session's CSRF token."""
    if "uid" in request.session:
        check_csrf(request, csrf_token)
        who = ctx.authn.current(request.session.get("uid"), request.session.get("sv"),
                                request.session.get("name", ""))
        if who is not None:
            ctx.authn.revoke(who.id)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
