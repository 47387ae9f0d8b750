"""The verification page a person opens on their phone (RFC 8628 §3.3).

Plain server-rendered HTML laid out for a phone's screen first (one column, tap
targets at least 48 px tall, nothing wider than the screen), no script. Jinja
escapes everything, since the user code comes from the query string. There is no
real login: this is a development server, and the person picks who signs in.

- ``/device``: type the code shown on the device;
- ``/device?user_code=…`` (``verification_uri_complete``, what the QR code holds): the
  code filled in, which device is asking (asking.py, RFC 8628 §5.4), what it asks
  for, who signs in, Approve or Deny;
- the answer: approved as whom, or denied.
"""

from __future__ import annotations

from flask import render_template_string
from markupsafe import Markup

from .asking import Asking

#: The people one can sign in as, (subject, name); "someone else" types both.
USERS = (("alice", "Alice Example"), ("bob", "Bob Example"), ("carol", "Carol Example"))

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>devicelink-sim: connect a device</title>
<style>
  *, *::before, *::after { box-sizing: border-box; }
  body { font: 17px/1.4 system-ui, sans-serif; margin: 0; padding: 1em; max-width: 30em;
         margin-inline: auto; color: #1b1b1f; background: #f6f6f8; overflow-wrap: anywhere; }
  h1 { font-size: 1.25em; margin: .2em 0 .6em; }
  h2 { font-size: 1em; margin: 1.2em 0 .4em; color: #444; }
  .card { background: #fff; border-radius: 12px; padding: .8em 1em; box-shadow: 0 1px 3px #0002; }
  .device-name { font-size: 1.1em; font-weight: 600; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .15em .8em; margin: .5em 0 0; font-size: .9em; }
  dt { color: #666; } dd { margin: 0; }
  code { font: .95em ui-monospace, monospace; }
  input[type=text] { width: 100%; font-size: 1.1em; padding: .55em; border: 1px solid #aaa; border-radius: 8px;
                     min-height: 48px; }
  input.code { font: bold 1.6em ui-monospace, monospace; letter-spacing: .08em; text-align: center; }
  .users label { display: flex; align-items: center; gap: .6em; min-height: 48px; padding: .3em .6em;
                 border: 1px solid #ccc; border-radius: 8px; margin: .4em 0; background: #fff; }
  .users input[type=radio] { width: 1.3em; height: 1.3em; flex: none; }
  .users small { color: #666; }
  .other { display: grid; gap: .4em; margin: .2em 0 0 2.4em; }
  .buttons { display: grid; gap: .6em; margin-top: 1.2em; }
  button { font-size: 1.1em; min-height: 52px; border-radius: 10px; border: 0; cursor: pointer; }
  .approve { background: #1a7f37; color: #fff; } .deny { background: #e5e5ea; color: #a40e26; }
  .error { color: #a40e26; font-weight: 600; }
  .note { color: #555; font-size: .9em; }
  .stepup { font-weight: 600; }
  .result { font-size: 1.2em; font-weight: 600; }
  [data-result="approved"] { color: #1a7f37; } [data-result="denied"] { color: #a40e26; }
</style>
</head>
<body>
<h1>Connect a device</h1>
{{ body }}
</body>
</html>"""

_ENTER = """
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
<form method="get" action="/device" class="card">
  <label for="user_code">Enter the code shown on your device</label>
  <input type="text" class="code" id="user_code" name="user_code" value="{{ user_code }}" autocomplete="off"
         autocapitalize="characters" spellcheck="false" autofocus>
  <input type="hidden" name="entered" value="1">
  <div class="buttons"><button type="submit" class="approve" id="continue">Continue</button></div>
</form>"""

_ASKING = """
<div class="card" id="asking">
  <div class="device-name" id="device-name">{{ asking.name }}</div>
  <dl>
    {% if asking.serial %}<dt>Serial</dt><dd><code id="device-serial">{{ asking.serial }}</code></dd>{% endif %}
    {% if asking.key_thumbprint %}<dt>Device key</dt><dd><code id="device-key">{{ asking.key_thumbprint }}</code></dd>{% endif %}
    <dt>Client</dt><dd><code id="client-id">{{ asking.client_id }}</code></dd>
    {% if scope is not none %}<dt>Asks for</dt><dd id="scope">{{ scope or "(default access)" }}</dd>{% endif %}
    {% if resources %}<dt>To use</dt><dd>{{ resources | join(", ") }}</dd>{% endif %}
  </dl>
</div>"""

_CONFIRM = """
<form method="post" action="/device">
<h2>Is this your device?</h2>
{{ asking_card }}
{% if stronger_sign_in %}
<p class="stepup">This app asks you to confirm with a stronger sign-in ({{ stronger_sign_in }}).</p>
{% endif %}
{% if max_age is not none %}
<p class="stepup">This app asks that you signed in within the last {{ max_age }} seconds.</p>
{% endif %}
<h2><label for="user_code">Check the code</label></h2>
<input type="text" class="code" id="user_code" name="user_code" value="{{ user_code }}" readonly>
<p class="note">{% if entered %}The code you typed.{% else %}Filled in from the QR code.{% endif %}
It must match the code on the device's screen. If it does not, or you did not start this, choose Deny.</p>
<h2>Sign in as</h2>
<div class="users">
  {% for subject, name in users %}
  <label><input type="radio" name="user" value="{{ subject }}" id="user-{{ subject }}"
         {% if loop.first %}checked{% endif %}> {{ name }} <small>{{ subject }}</small></label>
  {% endfor %}
  <label><input type="radio" name="user" value="" id="user-other"> Someone else</label>
  <div class="other">
    <input type="text" name="subject" id="subject" placeholder="user id, e.g. dave" autocomplete="off"
           autocapitalize="none" spellcheck="false">
    <input type="text" name="name" id="name" placeholder="display name, e.g. Dave Example" autocomplete="off">
  </div>
</div>
<div class="buttons">
  <button type="submit" name="action" value="approve" class="approve" id="approve">Approve</button>
  <button type="submit" name="action" value="deny" class="deny" id="deny">Deny</button>
</div>
</form>"""

_DONE = """
<div class="card">
{% if approved %}
<p class="result" id="result" data-result="approved">✓ Approved</p>
<p><b>{{ asking.name }}</b>{% if asking.serial %} (serial <code>{{ asking.serial }}</code>){% endif %}
is signing in as <b id="signed-in-as">{{ name }}</b> <small>({{ subject }})</small>. It shows
<i>Paired</i> in a moment.</p>
{% else %}
<p class="result" id="result" data-result="denied">✗ Denied</p>
<p><b>{{ asking.name }}</b>{% if asking.serial %} (serial <code>{{ asking.serial }}</code>){% endif %}
gets no access. It shows that it was declined.</p>
{% endif %}
<p class="note">You can close this page.</p>
</div>"""


def _page(body_template: str, **context) -> str:
    body = render_template_string(body_template, **context)
    # `body` is already-escaped HTML, so mark it safe for the layout.
    return render_template_string(_LAYOUT, body=Markup(body))


def enter_code(user_code: str = "", error: str | None = None) -> str:
    return _page(_ENTER, user_code=user_code, error=error)


def confirm(
    user_code: str,
    asking: Asking,
    scope: str | None,
    *,
    resources: tuple[str, ...] = (),
    stronger_sign_in: str | None = None,
    max_age: int | None = None,
    entered: bool = False,
) -> str:
    """RFC 8628 §5.4: tell the person which device and access they are approving.

    `asking` is the device (asking.py); `resources` the RFC 8707 resources asked for;
    `stronger_sign_in` the acr a step-up (RFC 9470) asks for, shown by its last ``:``
    part ("mfa"); `max_age` how recent the sign-in must be; `entered` whether the
    person typed the code (else it came with the address, from the QR code).
    """
    short = stronger_sign_in.rsplit(":", 1)[-1] if stronger_sign_in else None
    card = Markup(render_template_string(_ASKING, asking=asking, scope=scope, resources=resources))
    return _page(_CONFIRM, user_code=user_code, asking_card=card, stronger_sign_in=short, max_age=max_age,
                 entered=entered, users=USERS)


def chosen_user(form) -> tuple[str, str | None]:
    """(subject, name) from the confirm form: one of :data:`USERS`, or the typed subject and name
    (a subject alone gets the server's default name; nothing at all is alice)."""
    picked = form.get("user", "")
    for subject, name in USERS:
        if picked == subject:
            return subject, name
    subject = form.get("subject", "").strip()
    if not subject:
        return USERS[0]
    return subject, form.get("name", "").strip() or None


def done(approved: bool, subject: str, name: str, asking: Asking) -> str:
    return _page(_DONE, approved=approved, subject=subject, name=name, asking=asking)
