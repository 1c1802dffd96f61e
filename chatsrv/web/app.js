// chatsrv browser client: one WebSocket to /ws speaking the line protocol
// (PROTOCOL.md). Server text only ever reaches the page through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const KEEP = "chatsrv.login"; // localStorage: {name, token} after "remember me"; never a password
const HISTORY = 100; // lines asked for when a group is opened or re-joined
const state = {
  ws: null, name: null, token: null, remember: false, loggedIn: false, wasIn: false,
  typedPassword: false, sentToken: false, auto: false, // how the current login goes
  open: "general", convs: new Map(), // key (lower case) -> conversation
  rejoin: new Set(), leaveGeneral: false, // re-joins after a reconnect
  expect: { users: 0, groups: 0, token: 0 }, // replies asked for by the page, not the user
  users: [], allGroups: [], usersTimer: null, lastSent: null,
  backoff: 500, stop: null, // stop: why not to reconnect (exit, kicked, replaced)
};

// The server's name_key is Unicode casefolding; upper- then lower-casing gets the
// cases JS's toLowerCase alone misses (Straße = STRASSE, final sigma).
const key = (name) => name.normalize("NFC").toUpperCase().toLowerCase();
const hhmm = (d) => d.toTimeString().slice(0, 5);

function status(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; $("login-error").textContent = text; }

function conv(name, kind = "group") {
  const k = (kind === "private" ? "@" : "") + key(name);
  let c = state.convs.get(k);
  if (!c) {
    c = { key: k, name, kind, messages: [], unread: 0, joined: false, pending: null };
    state.convs.set(k, c);
  }
  return c;
}
const current = () => state.convs.get(state.open) || conv("General");

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function button(text, onClick, label) {
  const b = el("button", text);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

// ---- rendering -------------------------------------------------------------

function renderNav() {
  const groups = [], privates = [];
  let total = 0;
  for (const c of state.convs.values()) {
    if (c.kind === "group" && !c.joined) continue;
    total += c.unread;
    const b = button(c.name, () => openConv(c.key),
      c.unread ? `${c.name}, ${c.unread} unread` : undefined);
    if (c.unread) b.append(el("span", String(c.unread), "badge"));
    if (c.key === state.open) b.setAttribute("aria-current", "true");
    const li = el("li");
    li.append(b);
    (c.kind === "group" ? groups : privates).push(li);
  }
  $("groups").replaceChildren(...groups);
  if (!privates.length) privates.push(el("li", "Choose a name under Online", "hint"));
  $("privates").replaceChildren(...privates);
  $("menu-unread").textContent = total ? `(${total})` : "";
  document.title = total ? `(${total}) chatsrv` : "chatsrv";
  renderBrowser();
}

function renderUsers() {
  const items = state.users.map((u) => {
    const li = el("li");
    if (key(u) === key(state.name || "")) li.append(el("span", `${u} (you)`));
    else li.append(button(u, () => openConv(conv(u, "private").key), `Private conversation with ${u}`));
    return li;
  });
  $("users").replaceChildren(...items);
  $("users-count").textContent = `(${state.users.length})`;
}

function renderBrowser() {
  if ($("browser").hidden) return;
  const items = state.allGroups.map((g) => {
    const li = el("li");
    const c = state.convs.get(key(g));
    li.append(el("span", g));
    if (c && c.joined) li.append(button("Open", () => openConv(c.key), `Open ${g}`));
    else li.append(button("Join", () => send(`join ${g}`), `Join ${g}`));
    return li;
  });
  $("all-groups").replaceChildren(...items);
}

function item(m) {
  const li = el("li", undefined, m.cls);
  if (m.time) {
    const t = el("time", hhmm(m.time));
    t.dateTime = m.time.toISOString();
    t.title = m.time.toLocaleString();
    li.append(t, " ");
  }
  if (m.from) li.append(el("b", m.from), " ");
  li.append(el("span", m.text, "text"));
  if (m.failed) li.append(el("span", ` (not sent: ${m.failed})`, "failed"));
  return li;
}

function renderMessages() {
  const c = current();
  $("title").textContent = c.kind === "private" ? `Private: ${c.name}` : c.name;
  const ol = $("messages");
  ol.replaceChildren(...c.messages.map(item));
  ol.scrollTop = ol.scrollHeight;
}

function add(c, m) {
  c.messages.push(m);
  if (c.messages.length > 1000) c.messages.splice(0, c.messages.length - 1000);
  if (c.key === state.open) {
    const ol = $("messages");
    const atEnd = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 40;
    ol.append(item(m));
    if (ol.childElementCount > 1000) ol.firstElementChild.remove();
    if (atEnd || m.mine) ol.scrollTop = ol.scrollHeight;
  } else if (m.from && !m.mine) {
    c.unread += 1;
    renderNav();
  }
  return m;
}

// A line about the session itself (not a group's): shown in the open conversation.
const note = (text, cls = "info") => add(current(), { cls, text });

function openConv(k) {
  if (!state.convs.has(k)) return;
  state.open = k;
  state.convs.get(k).unread = 0;
  renderNav();
  renderMessages();
  showNav(false);
  $("text").focus();
}

function showNav(on) {
  $("side").classList.toggle("open", on);
  $("menu").setAttribute("aria-expanded", String(on));
}

// ---- history without duplicates ---------------------------------------------

const same = (a, b) => a.from === b.from && a.text === b.text;

// Merge a history reply into a conversation: the messages already shown are
// found at the history's end (an overlap of up to 10 lines), only the rest is new.
function merge(c, hist, live) {
  const shown = c.messages.filter((m) => m.from && !m.failed);
  let start = 0;
  for (let j = hist.length - 1; j >= 0 && shown.length; j--) {
    const n = Math.min(j + 1, shown.length, 10);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = same(hist[j - i], shown[shown.length - 1 - i]);
    if (ok) { start = j + 1; break; }
  }
  const fresh = hist.slice(start);
  for (const m of fresh) add(c, m);
  // Lines delivered while the history was on its way are in it already, unless
  // more than HISTORY of them came: then the history did not reach back to them.
  const tail = hist.slice(-live.length);
  if (!(live.length <= hist.length && live.every((m, i) => same(m, tail[i])))) {
    for (const m of live) add(c, m);
  }
  if (fresh.length && c.key !== state.open) renderNav();
}

function askHistory(c) {
  if (state.noHistory) return;
  c.pending = { hist: [], live: [] };
  send(`history ${c.name} ${HISTORY}`);
}

function endHistory(c) {
  if (!c.pending) return;
  const { hist, live } = c.pending;
  c.pending = null;
  merge(c, hist, live);
}

function dropPending(c) {
  if (!c.pending) return;
  const live = c.pending.live;
  c.pending = null;
  for (const m of live) add(c, m);
}

// ---- protocol ---------------------------------------------------------------

function send(line) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) { state.ws.send(line); return true; }
  return false;
}

function ask(what) { if (send(what)) state.expect[what] += 1; }

// At most one `users` refresh every 2 s, triggered by join/leave notices.
function refreshUsers() {
  if (state.usersTimer) return;
  state.usersTimer = setTimeout(() => { state.usersTimer = null; ask("users"); }, 2000);
}

function joined(name, mine) {
  const c = conv(name);
  c.name = name;
  if (key(name) === "general" && state.leaveGeneral) {
    state.leaveGeneral = false;
    send("leave General");
    return;
  }
  c.joined = true;
  askHistory(c);
  if (mine && !state.rejoin.delete(c.key)) openConv(c.key);
  else renderNav();
}

function gone(name, text) {
  const c = state.convs.get(key(name));
  if (c) { dropPending(c); c.joined = false; }
  state.rejoin.delete(key(name));
  if (state.open === key(name)) {
    const next = [...state.convs.values()].find((x) => x.joined);
    state.open = next ? next.key : "general";
    renderMessages();
  }
  if (c) state.convs.delete(c.key);
  renderNav();
  if (text) note(text, "notice you");
}

function publicLine(g, from, text, time, history) {
  const c = conv(g);
  const m = { cls: history ? "msg history" : "msg", from, text, time };
  if (c.pending) (history ? c.pending.hist : c.pending.live).push(m);
  else if (!history) add(c, m);
}

const notices = [
  [/^(\S+) (?:joined|left) the group (\S+)$/, (t, u, g) => { groupNote(g, t); refreshUsers(); }],
  [/^(\S+) was removed from (\S+) by \S+$/, (t, u, g) => { groupNote(g, t); refreshUsers(); }],
  [/^\S+ (?:made you a moderator of|muted you in|unmuted you in) ([^\s:]+)/, (t, g) => groupNote(g, t, "notice you")],
  [/^\S+ invited you to (\S+)$/, (t) => note(t, "notice you")],
  [/^\S+ removed you from ([^\s:]+)/, (t, g) => gone(g, t)],
  [/^group (\S+) was deleted by an administrator$/, (t, g) => gone(g, t)],
  [/^announcement: /, (t) => note(t, "notice you")],
  [/^disconnected/, (t) => { state.stop = t; note(t, "notice you"); }],
];

function groupNote(g, text, cls = "notice") {
  const c = state.convs.get(key(g));
  if (c && c.joined) add(c, { cls, text, time: new Date() });
  else note(text, cls);
}

function onNotice(text) {
  for (const [re, fn] of notices) {
    const m = re.exec(text);
    if (m) { fn(text, ...m.slice(1)); return; }
  }
  note(text, "notice");
}

function onError(line) {
  // A refused re-join (banned, invite-only, deleted group) drops the group.
  for (const k of state.rejoin) {
    const c = state.convs.get(k);
    if (c && line.includes(` ${c.name}`)) { gone(c.name, `${c.name}: ${line}`); return; }
  }
  for (const c of state.convs.values()) {
    if (c.pending && (line.endsWith(`of ${c.name}`) || line.endsWith(`group: ${c.name}`))) { dropPending(c); return; }
  }
  if (line === "error: history is disabled" && !state.noHistory) {
    state.noHistory = true; // the server keeps none: stop asking
    for (const c of state.convs.values()) dropPending(c);
    note(line);
    return;
  }
  if (line === "error: not logged in to an account" && state.expect.token) { state.expect.token -= 1; return; }
  const m = state.lastSent;
  if (m && !m.failed && Date.now() - m.sentAt < 10000) {
    m.failed = line.slice(7);
    if (state.open === m.conv) renderMessages();
  }
  state.lastSent = null;
  showError(line);
}

function onLine(line) {
  if (!state.loggedIn) { loginLine(line); return; }
  let m;
  if ((m = /^\[public group (\S+) from (\S+)\] ([\s\S]*)$/.exec(line))) {
    publicLine(m[1], m[2], m[3], new Date(), false);
  } else if ((m = /^\[history group (\S+) at (\S+) from (\S+)\] ([\s\S]*)$/.exec(line))) {
    publicLine(m[1], m[3], m[4], new Date(m[2]), true);
  } else if ((m = /^\[private from (\S+)\] ([\s\S]*)$/.exec(line))) {
    const c = conv(m[1], "private");
    add(c, { cls: "msg private", from: m[1], text: m[2], time: new Date() });
  } else if (line.startsWith("* ")) {
    onNotice(line.slice(2));
  } else if ((m = /^(?:ok: joined group|you joined the group) (\S+)$/.exec(line))) {
    joined(m[1], line.startsWith("ok: "));
  } else if ((m = /^ok: left group (\S+)$/.exec(line))) {
    gone(m[1]);
  } else if ((m = /^ok: created group (\S+)$/.exec(line))) {
    send(`join ${m[1]}`);
  } else if ((m = /^ok: end of history (\S+)$/.exec(line))) {
    const c = state.convs.get(key(m[1]));
    if (c) endHistory(c);
  } else if ((m = /^(users|groups): ?(.*)$/.exec(line))) {
    const names = m[2] ? m[2].split(" ") : [];
    if (m[1] === "users") { state.users = names; renderUsers(); } else { state.allGroups = names; renderBrowser(); }
    if (state.expect[m[1]]) state.expect[m[1]] -= 1; else note(line);
  } else if ((m = /^ok: token (\S+)$/.exec(line)) && state.expect.token) {
    state.expect.token -= 1;
    state.token = m[1];
    if (state.remember) localStorage.setItem(KEEP, JSON.stringify({ name: state.name, token: m[1] }));
  } else if (line.startsWith("error: ")) {
    onError(line);
  } else {
    if (line === "ok: bye") state.stop = "logged out; reload the page to log in again";
    note(line);
  }
}

// ---- login ------------------------------------------------------------------

function loginLine(line) {
  if (line === "enter a username:") {
    if (state.name) { state.auto = true; send(state.name); } else askFor("Name", false);
  } else if (line.startsWith("password for ")) {
    if (state.token) { state.sentToken = true; send(state.token); } else askFor("Password for " + line.slice(13, -1), true);
  } else if (line.startsWith("connected! welcome ")) {
    loggedIn(line.slice(19));
  } else if (line.startsWith("error: ")) {
    loginError(line);
  }
}

function loginError(line) {
  const auto = state.auto;
  state.auto = false;
  if (state.sentToken) { // expired or revoked: forget it, ask for the password
    state.sentToken = false;
    forget();
    showError("your remembered login has expired; enter your password");
    return;
  }
  if (auto && state.wasIn && /^error: (username taken|server full)/.test(line)) {
    status("name still in use; retrying"); // our old session has not ended yet
    state.ws.close();
    return;
  }
  state.name = null;
  state.typedPassword = false;
  showError(line);
}

function loggedIn(name) {
  state.loggedIn = true;
  state.name = name; // as the server writes it
  state.backoff = 500;
  state.auto = false;
  if (!state.sentToken && state.token && state.wasIn === false) forget(); // the name is no account now
  if (state.typedPassword) { state.typedPassword = false; ask("token"); }
  state.sentToken = false;
  $("login").hidden = true;
  $("chat").hidden = false;
  $("logout").hidden = false;
  $("menu").hidden = false;
  status("connected as " + state.name);
  showError("");
  if (state.wasIn) { // a reconnect: join again what was open
    state.leaveGeneral = !(state.convs.get("general") || {}).joined;
    for (const c of state.convs.values()) {
      if (c.kind === "group" && c.joined && c.key !== "general") { state.rejoin.add(c.key); send(`join ${c.name}`); }
    }
  }
  state.wasIn = true;
  ask("users");
  renderNav();
  renderMessages();
  $("text").focus();
}

function askFor(label, secret) {
  $("login").hidden = false;
  $("chat").hidden = true;
  $("login-label").textContent = label;
  $("remember-row").hidden = !secret;
  const input = $("login-input");
  input.type = secret ? "password" : "text";
  input.autocomplete = secret ? "current-password" : "username";
  input.value = "";
  input.focus();
}

function forget() {
  state.token = null;
  localStorage.removeItem(KEEP);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = state.ws = new WebSocket(`${scheme}//${location.host}/ws`);
  status("connecting…");
  ws.onopen = () => status(state.name ? `logging in as ${state.name}…` : "online");
  ws.onmessage = (ev) => onLine(String(ev.data));
  ws.onclose = () => {
    if (ws !== state.ws) return;
    state.loggedIn = false;
    state.auto = false;
    state.sentToken = false;
    state.rejoin.clear();
    for (const c of state.convs.values()) dropPending(c);
    state.expect = { users: 0, groups: 0, token: 0 };
    if (state.stop) { status(state.stop); return; }
    const delay = state.backoff * (0.75 + Math.random() / 2);
    status(`disconnected; retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
    setTimeout(connect, delay);
    state.backoff = Math.min(state.backoff * 2, 30000);
  };
}

// ---- user input ---------------------------------------------------------------

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("login-input");
  const value = input.value;
  if (!value) return;
  if (input.type === "password") {
    state.typedPassword = true;
    state.remember = $("remember").checked;
  } else {
    const [name, ...rest] = value.trim().split(/\s+/);
    state.name = name;
    state.typedPassword = rest.length > 0; // `name password` in one line
  }
  input.value = "";
  showError("");
  send(value);
});

function sendText(c, text) {
  if (c.kind === "group" && !c.joined) { showError(`error: not a member of ${c.name}`); return; }
  const to = c.kind === "private" ? `private ${c.name}` : `public ${c.name}`;
  if (!send(`${to} ${text}`)) { showError("not connected; try again when the status says connected"); return; }
  if (c.kind === "private" && key(c.name) === key(state.name)) return; // comes back to us
  if (!c.messages.length) renderNav(); // a new private conversation
  const m = add(c, { cls: "msg mine", from: state.name, text, time: new Date(), mine: true });
  m.sentAt = Date.now();
  m.conv = c.key;
  state.lastSent = m;
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim()) return;
  input.value = "";
  showError("");
  const cmd = /^\/(\S+)(?:[ \t]+(\S+)[ \t]+([\s\S]*))?$/.exec(text);
  const word = cmd ? cmd[1].toLowerCase() : "";
  if (text.startsWith("//") || !text.startsWith("/")) sendText(current(), text.replace(/^\//, ""));
  else if (word === "private" && cmd[3]) sendText(conv(cmd[2], "private"), cmd[3]);
  else if (word === "public" && cmd[3] && (state.convs.get(key(cmd[2])) || {}).joined) sendText(conv(cmd[2]), cmd[3]);
  else {
    state.lastSent = null;
    const h = /^history\s+(\S+)/i.exec(text.slice(1)); // merged like any history: no duplicates
    const c = h && state.convs.get(key(h[1]));
    if (c && c.joined && !c.pending && !state.noHistory) c.pending = { hist: [], live: [] };
    send(text.slice(1));
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
$("browse").addEventListener("click", () => {
  const open = $("browser").hidden;
  $("browser").hidden = !open;
  $("browse").setAttribute("aria-expanded", String(open));
  if (open) { ask("groups"); $("group-name").focus(); }
});
$("menu").addEventListener("click", () => showNav(!$("side").classList.contains("open")));
// Log out: forget the remembered token, end the session, start again at the name prompt.
$("logout").addEventListener("click", () => {
  forget();
  const old = state.ws;
  state.ws = null;
  old.onmessage = old.onclose = null;
  if (old.readyState === WebSocket.OPEN) old.send("exit");
  old.close();
  Object.assign(state, {
    name: null, loggedIn: false, wasIn: false, typedPassword: false, remember: false,
    open: "general", users: [], allGroups: [], lastSent: null, backoff: 500, stop: null,
  });
  state.convs.clear();
  state.rejoin.clear();
  $("chat").hidden = true;
  $("logout").hidden = true;
  $("menu").hidden = true;
  $("remember").checked = false;
  connect();
  $("login-error").textContent = "You are logged out.";
});

// Keyboard: Esc clears the composer (in it) or closes the open panel; Alt+Up/Down moves between
// conversations; "/" from anywhere outside a field starts a command.
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") {
    const inNav = $("side").contains(document.activeElement);
    if (document.activeElement === $("text")) { $("text").value = ""; showError(""); }
    else if ($("side").classList.contains("open")) { showNav(false); $("menu").focus(); }
    else if (inNav && !$("browser").hidden) { $("browse").click(); $("browse").focus(); }
    else showError("");
  } else if (ev.altKey && (ev.key === "ArrowUp" || ev.key === "ArrowDown") && state.loggedIn) {
    const keys = [...state.convs.values()].filter((c) => c.kind === "private" || c.joined).map((c) => c.key);
    const i = keys.indexOf(state.open) + (ev.key === "ArrowUp" ? -1 : 1);
    if (keys.length) openConv(keys[(i + keys.length) % keys.length]);
    ev.preventDefault();
  } else if (ev.key === "/" && !/^(INPUT|TEXTAREA)$/.test(document.activeElement.tagName) && state.loggedIn) {
    $("text").focus();
  }
});

try {
  const saved = JSON.parse(localStorage.getItem(KEEP) || "null");
  if (saved && saved.name && saved.token) Object.assign(state, { name: saved.name, token: saved.token, remember: true });
} catch (e) { localStorage.removeItem(KEEP); }
connect();
