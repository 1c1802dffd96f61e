// chatsrv browser client: one WebSocket to /ws speaking the line protocol
// (PROTOCOL.md). Server text is always put in the page with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, name: null, password: null, loggedIn: false, open: "General",
  groups: new Map(), // joined group -> {messages: [], unread: 0}
  backoff: 500, bye: false,
};

function status(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; $("login-error").textContent = text; }

function conv(name) {
  let c = state.groups.get(name);
  if (!c) { c = { messages: [], unread: 0 }; state.groups.set(name, c); }
  return c;
}

function renderGroups() {
  const ul = $("groups");
  ul.replaceChildren();
  for (const [name, c] of state.groups) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = c.unread ? `${name} (${c.unread})` : name;
    if (name === state.open) b.setAttribute("aria-current", "true");
    b.addEventListener("click", () => openGroup(name));
    li.append(b);
    ul.append(li);
  }
}

function renderMessages() {
  $("title").textContent = state.open;
  const ol = $("messages");
  ol.replaceChildren();
  for (const m of conv(state.open).messages) ol.append(item(m));
  ol.scrollTop = ol.scrollHeight;
}

function item(m) {
  const li = document.createElement("li");
  li.className = m.kind;
  if (m.time) {
    const t = document.createElement("time");
    t.textContent = m.time;
    li.append(t);
  }
  if (m.from) {
    const f = document.createElement("b");
    f.textContent = m.from;
    li.append(f, " ");
  }
  li.append(m.text);
  return li;
}

function add(group, m) {
  const c = conv(group);
  c.messages.push(m);
  if (c.messages.length > 500) c.messages.shift();
  if (group === state.open) {
    const ol = $("messages");
    ol.append(item(m));
    ol.scrollTop = ol.scrollHeight;
  } else {
    c.unread += 1;
  }
  renderGroups();
}

function openGroup(name) {
  state.open = name;
  conv(name).unread = 0;
  renderGroups();
  renderMessages();
  $("text").focus();
}

function now() { return new Date().toISOString().slice(11, 16); }

function send(line) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(line);
}

const patterns = [
  [/^\[public group (\S+) from (\S+)\] ([\s\S]*)$/, (g, f, t) => add(g, { kind: "msg", from: f, text: t, time: now() })],
  [/^\[history group (\S+) at \S*T(\d\d:\d\d)\S* from (\S+)\] ([\s\S]*)$/, (g, tm, f, t) => add(g, { kind: "msg history", from: f, text: t, time: tm })],
  [/^\[private from (\S+)\] ([\s\S]*)$/, (f, t) => add("@" + f, { kind: "msg private", from: f, text: t, time: now() })],
  [/^\* (\S+) (joined|left) the group (\S+)$/, (u, w, g) => add(g, { kind: "notice", text: `${u} ${w} the group` })],
  [/^you joined the group (\S+)$/, (g) => { conv(g); renderGroups(); }],
  [/^ok: joined group (\S+)$/, (g) => { conv(g); send(`history ${g} 50`); openGroup(g); }],
  [/^ok: left group (\S+)$/, (g) => { state.groups.delete(g); if (state.open === g) state.open = "General"; renderGroups(); renderMessages(); }],
  [/^ok: created group (\S+)$/, (g) => send(`join ${g}`)],
  [/^groups: ?(.*)$/, (list) => { $("group-name").setAttribute("placeholder", list ? "e.g. " + list.split(" ").slice(0, 3).join(", ") : "group name"); add(state.open, { kind: "info", text: "groups: " + list }); }],
];

function onLine(line) {
  if (!state.loggedIn) {
    if (line === "enter a username:") {
      if (state.name) { send(state.name); }
      else { askFor("Name", false); }
      return;
    }
    if (line.startsWith("password for ")) {
      if (state.password) { send(state.password); }
      else { askFor("Password for " + state.name, true); }
      return;
    }
    if (line.startsWith("connected! ")) {
      state.loggedIn = true;
      state.backoff = 500;
      $("login").hidden = true;
      $("chat").hidden = false;
      status("connected as " + state.name);
      showError("");
      for (const g of state.groups.keys()) if (g !== "General" && !g.startsWith("@")) send(`join ${g}`);
      send("history General 50");
      openGroup(state.open);
      return;
    }
    if (line.startsWith("error: ")) { state.name = null; state.password = null; showError(line); }
    return;
  }
  for (const [re, fn] of patterns) {
    const m = re.exec(line);
    if (m) { fn(...m.slice(1)); return; }
  }
  if (line.startsWith("error: ")) { showError(line); return; }
  if (line.startsWith("ok: end of history")) return;
  if (line === "ok: bye") state.bye = true; // `/exit`: do not reconnect
  add(state.open, { kind: "info", text: line });
}

function askFor(label, secret) {
  $("login").hidden = false;
  $("chat").hidden = true;
  $("login-label").textContent = label;
  const input = $("login-input");
  input.type = secret ? "password" : "text";
  input.value = "";
  input.focus();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = state.ws = new WebSocket(`${scheme}//${location.host}/ws`);
  status("connecting…");
  ws.onopen = () => status("online");
  ws.onmessage = (ev) => onLine(String(ev.data));
  ws.onclose = () => {
    state.loggedIn = false;
    if (state.bye) { status("logged out; reload the page to log in again"); return; }
    status(`disconnected; retrying in ${Math.round(state.backoff / 1000)} s`);
    setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 30000);
  };
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("login-input");
  const value = input.value;
  if (input.type === "password") { state.password = value; } else { state.name = value.trim(); }
  input.value = "";
  showError("");
  send(value);
});

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text) return;
  input.value = "";
  showError("");
  if (text.startsWith("/")) { send(text.slice(1)); return; }
  if (state.open.startsWith("@")) {
    send(`private ${state.open.slice(1)} ${text}`);
    add(state.open, { kind: "msg mine", from: state.name, text, time: now() });
  } else {
    send(`public ${state.open} ${text}`);
    add(state.open, { kind: "msg mine", from: state.name, text, time: now() });
  }
});

$("new-group").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const g = $("group-name").value.trim();
  if (g) send(`join ${g}`);
  $("group-name").value = "";
});
$("create").addEventListener("click", () => {
  const g = $("group-name").value.trim();
  if (g) send(`create ${g}`);
  $("group-name").value = "";
});

connect();
