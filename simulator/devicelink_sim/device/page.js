// The virtual device's page: everything arrives on one EventSource (/events), nothing is polled.
"use strict";

const $ = (id) => document.getElementById(id);
let status = null;
let server = null;

// Requests go out one after another, so a quick press's release never overtakes its press.
let queue = Promise.resolve();
function post(path, body) {
  queue = queue.then(() => fetch(path, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  })).catch((err) => console.warn(path, err));
  return queue;
}

function text(id, value) { $(id).textContent = value === null || value === undefined || value === "" ? "—" : value; }

const handlers = {
  device(d) {
    $("led-pin").textContent = `GPIO${d.led_pin}`;
    $("hold-seconds").textContent = d.hold_seconds;
    $("serial").textContent = d.serial;
    $("registers").textContent = d.registers
      ? `registers itself as “${d.name}” with its key (RFC 7591), so the phone's page names it`
      : "the server's built-in client: the phone's page cannot name it";
    $("screen-big").dataset.screen = d.screen;
    if (d.screen === "hdmi") {
      $("truesize").hidden = true;  // the TV's frame, scaled to the column: true size would not fit
    } else {
      $("screen-big").style.width = `${d.width * 4}px`;
    }
  },
  server(s) {
    server = s;
    $("issuer").textContent = s.issuer;
    $("faults-cli").textContent = `devicelink-sim faults --issuer ${s.issuer} on token:status`;
    if (!$("phone").getAttribute("src")) showPhone(s.verification_uri);
  },
  frame(f) {
    const src = `data:image/png;base64,${f.png}`;
    for (const id of ["screen", "screen-big"]) {
      $(id).src = src;
      $(id).dataset.frame = f.n;
    }
  },
  led(l) {
    const v = l.value === null ? 0 : l.value;
    const led = $("led");
    led.dataset.value = v;
    led.style.background = `rgb(${Math.round(40 + 20 * v)}, ${Math.round(16 + 239 * v)}, ${Math.round(16 + 104 * v)})`;
    led.style.boxShadow = `0 0 ${Math.round(18 * v)}px ${Math.round(6 * v)}px rgba(80, 255, 120, ${0.7 * v})`;
  },
  led_pattern(p) { $("led-pattern").textContent = p.pattern ? `LED: ${p.pattern}` : ""; },
  button(b) { $("button").dataset.pressed = String(b.pressed); },
  status(s) {
    status = s;
    const state = $("state");
    state.textContent = s.state;
    state.dataset.state = s.state;
    text("account", s.account ? `${s.account.name || ""} (${s.account.sub})` : null);
    const p = s.pairing;
    text("code", p ? `${p.user_code} at ${p.verification_uri} (expires in ${p.expires_in} s)` : null);
    $("code").dataset.userCode = p ? p.user_code : "";
    text("token", s.access_token_expires_in === null || s.access_token_expires_in === undefined
      ? null : `expires in ${s.access_token_expires_in} s${s.last_refresh ? `, last refresh ${s.last_refresh}` : ""}`);
    text("message", s.message);
    text("last-error", s.last_error ? `${s.last_error}${s.last_error_kind ? ` [${s.last_error_kind}]` : ""}` : null);
    $("scan").disabled = !(p && (p.verification_uri_complete || p.verification_uri));
  },
  daemon(d) {
    $("daemon").textContent = d.running ? `running (pid ${d.pid})` : `exited (status ${d.exit})`;
  },
  log(lines) {
    const log = $("log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = lines.join("\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
  },
  faults(f) { drawFaults(f); },
  requests(r) {
    const counts = Object.entries(r.counts).map(([k, n]) => `${k} ${n}`).join(", ");
    $("request-counts").textContent = counts ? `(${counts})` : "";
    const list = $("requests");
    list.replaceChildren(...r.recent.map((hit) => {
      const li = document.createElement("li");
      li.textContent = `${hit.at.toFixed(1).padStart(7)} s  ${hit.request.padEnd(10)} `;
      const outcome = document.createElement("span");
      outcome.textContent = hit.fault ? `${hit.fault} → ${hit.outcome}` : hit.outcome;
      if (hit.fault) outcome.className = "fault";
      li.append(outcome);
      return li;
    }));
  },
};

let drawnKinds = "";
function drawFaults(f) {
  const table = $("faults");
  const shape = JSON.stringify([f.endpoints, f.kinds.map((k) => k.kind)]);
  if (shape !== drawnKinds) {  // the grid: one row per kind, one switch per endpoint
    drawnKinds = shape;
    const head = document.createElement("tr");
    head.append(Object.assign(document.createElement("th"), {textContent: "fault"}));
    for (const e of f.endpoints) head.append(Object.assign(document.createElement("th"), {textContent: e}));
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...f.kinds.map((k) => {
      const tr = document.createElement("tr");
      tr.dataset.kind = k.kind;
      const name = document.createElement("td");
      name.innerHTML = "<b></b><small></small>";
      name.firstChild.textContent = k.kind;
      name.lastChild.textContent = k.label;
      tr.append(name);
      for (const e of f.endpoints) {
        const td = document.createElement("td");
        const input = Object.assign(document.createElement("input"), {type: "checkbox", className: "switch"});
        input.dataset.endpoint = e;
        input.dataset.kind = k.kind;
        input.id = `fault-${e}-${k.kind}`;
        input.title = `${k.kind} on ${e}`;
        input.addEventListener("change", () => post("/faults", {switch: [{endpoint: e, kind: k.kind, on: input.checked}]}));
        td.append(input);
        tr.append(td);
      }
      return tr;
    }));
  }
  const on = new Set(f.switches.map((s) => `${s.endpoint}/${s.kind}`));
  for (const input of table.querySelectorAll("input.switch")) {
    input.checked = on.has(`${input.dataset.endpoint}/${input.dataset.kind}`);
  }
  for (const tr of table.tBodies[0].rows) {
    tr.classList.toggle("on", [...tr.querySelectorAll("input")].some((i) => i.checked));
  }
  table.dataset.switches = [...on].sort().join(" ");
}

function showPhone(url) {
  $("phone").src = url;
  $("phone-tab").href = url;
}

// The button: down while the pointer (or Space/Enter) is down on it. A finger keeps a tact switch
// closed for a tenth of a second at least; a mouse click can be a few milliseconds, which the
// daemon's 50 ms debounce would rightly take for contact bounce. So a press lasts MIN_PRESS_MS.
const MIN_PRESS_MS = 120;
const button = $("button");
let down = false;
let downAt = 0;
function press(pressed) {
  if (pressed === down) return;
  down = pressed;
  button.dataset.pressed = String(pressed);
  if (pressed) {
    downAt = performance.now();
    post("/button", {pressed: true});
  } else {
    const left = MIN_PRESS_MS - (performance.now() - downAt);
    setTimeout(() => { if (!down) post("/button", {pressed: false}); }, Math.max(0, left));
  }
}
button.addEventListener("pointerdown", (ev) => { button.setPointerCapture(ev.pointerId); press(true); ev.preventDefault(); });
button.addEventListener("pointerup", () => press(false));
button.addEventListener("pointercancel", () => press(false));
button.addEventListener("lostpointercapture", () => press(false));
button.addEventListener("keydown", (ev) => { if ((ev.key === " " || ev.key === "Enter") && !ev.repeat) { press(true); ev.preventDefault(); } });
button.addEventListener("keyup", (ev) => { if (ev.key === " " || ev.key === "Enter") press(false); });
button.addEventListener("blur", () => press(false));

$("scan").addEventListener("click", () => {
  const p = status && status.pairing;
  if (p) showPhone(p.verification_uri_complete || p.verification_uri);
});
$("phone-home").addEventListener("click", () => server && showPhone(server.verification_uri));
$("faults-clear").addEventListener("click", () => post("/faults", {clear: true}));
$("faults-release").addEventListener("click", () => post("/faults", {release: true}));
$("revoke-now").addEventListener("click", () => post("/faults", {revoke_grants: true}));

const events = new EventSource("/events");
for (const [topic, handle] of Object.entries(handlers)) {
  events.addEventListener(topic, (ev) => handle(JSON.parse(ev.data)));
}
events.addEventListener("open", () => { $("connection").dataset.live = "true"; $("connection").textContent = "live"; });
events.addEventListener("error", () => { $("connection").dataset.live = "false"; $("connection").textContent = "reconnecting…"; });
