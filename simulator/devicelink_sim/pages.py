"""The verification page a person opens on their phone (RFC 8628 §3.3).

Plain server-rendered HTML, small enough for a phone screen. Jinja escapes
everything, since the user code comes from the query string. There is no real
login: this is a development server, and the person types the name to sign in as.
"""

from __future__ import annotations

from flask import render_template_string
from markupsafe import Markup

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>devicelink-sim: connect a device</title>
<style>
  body { font: 18px/1.4 system-ui, sans-serif; max-width: 26em; margin: 1em auto; padding: 0 1em; }
  h1 { font-size: 1.3em; }
  .code { font: bold 2em ui-monospace, monospace; letter-spacing: .1em; text-align: center; margin: .5em 0; }
  label { display: block; margin-top: .8em; }
  input[type=text] { width: 100%; box-sizing: border-box; font-size: 1.1em; padding: .4em; }
  button { font-size: 1.1em; padding: .6em 1.2em; margin: 1em .5em 0 0; }
  .error { color: #a00; }
  .note { color: #555; font-size: .9em; }
  .stepup { font-weight: bold; }
</style>
</head>
<body>
<h1>Connect a device</h1>
{{ body }}
</body>
</html>"""

_ENTER = """
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<form method="get" action="/device">
  <label>Enter the code shown on your device
    <input type="text" name="user_code" value="{{ user_code }}" autocomplete="off"
           autocapitalize="characters" spellcheck="false" autofocus>
  </label>
  <button type="submit">Continue</button>
</form>"""

_CONFIRM = """
<p>Check that this code is the one shown on the device in front of you.</p>
<p class="code">{{ user_code }}</p>
<p class="note">Application <b>{{ client_id }}</b> asks for: {{ scope or "(default access)" }}</p>
{% if resources %}<p class="note">To use: {{ resources | join(", ") }}</p>{% endif %}
{% if stronger_sign_in %}
<p class="stepup">This app asks you to confirm with a stronger sign-in ({{ stronger_sign_in }}).</p>
{% endif %}
{% if max_age is not none %}
<p class="stepup">This app asks that you signed in within the last {{ max_age }} seconds.</p>
{% endif %}
<form method="post" action="/device">
  <input type="hidden" name="user_code" value="{{ user_code }}">
  <label>Sign in as <input type="text" name="subject" value="alice"></label>
  <label>Display name <input type="text" name="name" value="Alice Example"></label>
  <button type="submit" name="action" value="approve">Approve</button>
  <button type="submit" name="action" value="deny">Deny</button>
</form>"""

_DONE = """
<p>{% if approved %}Approved. Your device will sign in as <b>{{ subject }}</b> in a moment.
{% else %}Denied. The device will not get access.{% endif %}</p>
<p class="note">You can close this page.</p>"""


def _page(body_template: str, **context) -> str:
    body = render_template_string(body_template, **context)
    # `body` is already-escaped HTML, so mark it safe for the layout.
    return render_template_string(_LAYOUT, body=Markup(body))


def enter_code(user_code: str = "", error: str | None = None) -> str:
    return _page(_ENTER, user_code=user_code, error=error)


def confirm(
    user_code: str,
    client_id: str,
    scope: str | None,
    *,
    resources: tuple[str, ...] = (),
    stronger_sign_in: str | None = None,
    max_age: int | None = None,
) -> str:
    """RFC 8628 §5.4: tell the person which device and access they are approving.

    `resources` are the RFC 8707 resources asked for; `stronger_sign_in` the acr a
    step-up (RFC 9470) asks for, shown by its last ``:`` part ("mfa"); `max_age` how
    recent the sign-in must be.
    """
    short = stronger_sign_in.rsplit(":", 1)[-1] if stronger_sign_in else None
    return _page(_CONFIRM, user_code=user_code, client_id=client_id, scope=scope,
                 resources=resources, stronger_sign_in=short, max_age=max_age)


def done(approved: bool, subject: str) -> str:
    return _page(_DONE, approved=approved, subject=subject)
