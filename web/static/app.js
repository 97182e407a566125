// The web panel: plain JavaScript over the gateway's /api. Every piece of user
// text goes into the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  user: null, following: new Set(), feed: new Map(), stream: null,
  chatWith: null, chat: new Map(), unread: { posts: 0, messages: new Map() },
  samples: [], elections: [], rounds: [], lastSeen: new Map(), statusTimer: null,
  lastCoordinator: undefined, lastSync: 0, statusAt: 0,
};
const PAGES = ["signin", "home", "people", "messages", "cluster"];
const CHART_SECONDS = 120;
const COLORS = ["#2f6fed", "#d64545", "#1f9d55", "#c98a00", "#8e44ad", "#16a2b8", "#e67e22", "#555"];

// --- the API ------------------------------------------------------------------
async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-Requested-With": "social-web" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/api/" + path, options);
  } catch (err) {
    throw Object.assign(new Error("the gateway does not answer"), { code: "unavailable", status: 0 });
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = Object.assign(new Error(data.error || response.statusText), { code: data.code, status: response.status });
    if (response.status === 401 && path !== "login" && path !== "register") signedOut();
    throw err;
  }
  return data;
}

function flash(text) {
  const el = $("flash");
  el.textContent = text;
  el.hidden = !text;
  if (text) setTimeout(() => { if (el.textContent === text) el.hidden = true; }, 6000);
}

// --- times -----------------------------------------------------------------------
function when(item) {
  const t = item.timestamp * 1000, age = (Date.now() - t) / 1000, d = new Date(t);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  if (age < 45) return "just now";
  if (age < 3600) return `${Math.max(1, Math.round(age / 60))} min ago`;
  if (new Date().toDateString() === d.toDateString()) return hm;
  return d.toLocaleDateString([], { day: "numeric", month: "short" }) + " " + hm;
}
function stamp(el, item) {
  el.textContent = when(item);
  el.title = `Lamport ${item.lamport} · ${new Date(item.timestamp * 1000).toLocaleString()}`;
  el.dataset.ts = item.timestamp;
  el.dataset.lamport = item.lamport;
}
function refreshTimes() {
  document.querySelectorAll(".when[data-ts]").forEach((el) =>
    stamp(el, { timestamp: +el.dataset.ts, lamport: el.dataset.lamport }));
}
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function avatar(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  const a = el("span", "avatar", name.slice(0, 1).toUpperCase());
  a.style.background = `hsl(${h} 55% 48%)`;
  a.setAttribute("aria-hidden", "true");
  return a;
}

// --- pages -----------------------------------------------------------------------
function currentPage() {
  const name = location.hash.replace(/^#\//, "").split("/")[0];
  return PAGES.includes(name) ? name : "home";
}
function show() {
  let page = currentPage();
  if (!state.user && page !== "cluster") page = "signin";
  for (const name of PAGES) $("page-" + name).hidden = name !== page;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  clearInterval(state.statusTimer);
  state.statusTimer = null;
  if (page === "home") { state.unread.posts = 0; badge(); loadFeed(); }
  if (page === "people") loadPeople();
  if (page === "messages") loadConversations();
  if (page === "cluster") { pollStatus(); state.statusTimer = setInterval(pollStatus, 1000); }
}
function badge() {
  let n = state.unread.posts;
  for (const count of state.unread.messages.values()) n += count;
  const b = $("badge");
  b.hidden = n === 0;
  b.textContent = n > 99 ? "99+" : String(n);
  b.setAttribute("aria-label", `${n} new notification${n === 1 ? "" : "s"}`);
  b.title = `${state.unread.posts} new posts, ${n - state.unread.posts} new messages`;
}

// --- signing in ----------------------------------------------------------------------
async function signIn(register) {
  const user = $("signin-user").value.trim(), password = $("signin-password").value;
  const error = $("signin-error");
  error.hidden = true;
  try {
    const result = await api("POST", register ? "register" : "login", { user, password });
    $("signin-password").value = "";
    await signedIn(result.user);
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}
async function signedIn(user) {
  state.user = user;
  $("me").textContent = user;
  $("signout").hidden = false;
  if (!location.hash || location.hash === "#/signin") location.hash = "#/home";
  openStream();
  show();
  try {    // what came while away: counted once (the servers mark them shown)
    const missed = await api("POST", "notifications");
    state.unread.posts += (missed.notifications || []).length;
    badge();
  } catch (err) { /* the count is a nicety */ }
}
function signedOut() {
  state.user = null;
  if (state.stream) state.stream.close();
  state.stream = null;
  $("me").textContent = "";
  $("signout").hidden = true;
  state.feed.clear(); state.chat.clear(); state.chatWith = null;
  state.unread = { posts: 0, messages: new Map() };
  badge();
  show();
}

// --- live ----------------------------------------------------------------------------------
function openStream() {
  if (state.stream) state.stream.close();
  const source = new EventSource("/api/stream");
  state.stream = source;
  source.addEventListener("post", (e) => livePost(JSON.parse(e.data)));
  source.addEventListener("message", (e) => liveMessage(JSON.parse(e.data)));
  source.addEventListener("problem", (e) => {
    const p = JSON.parse(e.data);
    if (p.code === "unauthorized") { source.close(); signedOut(); }
  });
  source.onerror = () => {   // the browser retries by itself, unless the answer was an error
    if (source.readyState !== EventSource.CLOSED || state.stream !== source) return;
    setTimeout(async () => {
      if (state.stream !== source || !state.user) return;
      try { await api("GET", "me"); openStream(); } catch (err) { /* 401 signs out */ }
    }, 3000);
  };
}
function livePost(post) {
  post.followed = true;
  state.feed.set(post.id, post);
  if (!$("page-home").hidden) renderFeed(post.id);
  else { state.unread.posts += 1; badge(); }
}
function liveMessage(message) {
  const partner = message.from === state.user ? message.to : message.from;
  if (partner === state.chatWith && !$("page-messages").hidden) {
    state.chat.set(message.id, message);
    renderChat();
  } else {
    state.unread.messages.set(partner, (state.unread.messages.get(partner) || 0) + 1);
    badge();
    if (!$("page-messages").hidden) loadConversations();
  }
}

// --- home ------------------------------------------------------------------------------------
async function loadFeed() {
  try {
    const result = await api("GET", "feed?limit=50");
    state.feed = new Map((result.posts || []).map((p) => [p.id, p]));
    const me = await api("GET", "me");
    state.following = new Set(me.following || []);
    renderFeed();
  } catch (err) { if (err.status !== 401) flash(err.message); }
}
function renderFeed(newId) {
  const list = $("feed");
  const posts = [...state.feed.values()].sort((a, b) =>
    (b.followed === true) - (a.followed === true) || b.lamport - a.lamport);
  list.replaceChildren(...posts.map((p) => {
    const li = el("li", "entry" + (p.id === newId ? " new" : ""));
    li.dataset.id = p.id;
    const head = el("div", "head");
    head.append(avatar(p.author), el("span", "author", p.author));
    if (p.followed) head.append(el("span", "tag", "following"));
    if (p.author === state.user) head.append(el("span", "tag", "you"));
    const t = el("span", "when");
    stamp(t, p);
    head.append(t);
    li.append(head, el("div", "text", p.text));
    return li;
  }));
  $("feed-empty").hidden = posts.length > 0;
}
async function submitPost(event) {
  event.preventDefault();
  const box = $("post-text"), text = box.value;
  if (!text.trim()) return;
  const button = event.submitter || $("composer").querySelector("button");
  button.disabled = true;
  try {
    const result = await api("POST", "post", { text });
    box.value = "";
    countPost();
    state.feed.set(result.post.id, { ...result.post, followed: false });
    renderFeed(result.post.id);
  } catch (err) { flash(err.message); }
  finally { button.disabled = false; }
}
function countPost() { $("post-count").textContent = `${$("post-text").value.length} / 500`; }

// --- people ----------------------------------------------------------------------------------
async function loadPeople() {
  try {
    const [users, me] = await Promise.all([api("GET", "users"), api("GET", "me")]);
    state.following = new Set(me.following || []);
    const list = $("people");
    const others = (users.users || []).filter((n) => n !== state.user);
    list.replaceChildren(...others.map(personRow));
    if (!others.length) list.append(el("li", "empty", "Nobody else yet."));
  } catch (err) { if (err.status !== 401) flash(err.message); }
}
function personRow(name) {
  const li = el("li");
  li.dataset.user = name;
  const button = el("button");
  const paint = () => {
    const on = state.following.has(name);
    button.textContent = on ? "Unfollow" : "Follow";
    button.className = on ? "following" : "";
  };
  paint();
  button.type = "button";
  button.addEventListener("click", async () => {
    const on = state.following.has(name);
    button.disabled = true;
    try {
      await api("POST", on ? "unfollow" : "follow", { user: name });
      if (on) state.following.delete(name); else state.following.add(name);
      paint();
    } catch (err) { flash(err.message); }
    finally { button.disabled = false; }
  });
  const message = el("a", "small", "message");
  message.href = "#/messages/" + encodeURIComponent(name);
  li.append(avatar(name), el("span", "name", name), message, button);
  return li;
}

// --- messages ----------------------------------------------------------------------------------
async function loadConversations() {
  const wanted = decodeURIComponent(location.hash.split("/")[2] || "");
  try {
    const [users, conv] = await Promise.all([api("GET", "users"), api("GET", "conversations")]);
    const select = $("chat-with");
    const others = (users.users || []).filter((n) => n !== state.user);
    select.replaceChildren(el("option", "", "choose someone…"), ...others.map((n) => {
      const o = el("option", "", n); o.value = n; return o;
    }));
    select.firstChild.value = "";
    const list = $("conversations");
    const rows = conv.conversations || [];
    for (const name of state.unread.messages.keys()) {
      if (!rows.some((c) => c.with === name)) rows.unshift({ with: name, last: null });
    }
    list.replaceChildren(...rows.map((c) => {
      const li = el("li"), b = el("button");
      b.type = "button";
      if (c.with === state.chatWith) b.classList.add("open");
      const words = el("span");
      words.append(el("span", "", c.with), el("span", "preview", c.last ? c.last.text : ""));
      b.append(avatar(c.with), words);
      const n = state.unread.messages.get(c.with);
      if (n) b.append(el("span", "badge unread", String(n)));
      b.addEventListener("click", () => { location.hash = "#/messages/" + encodeURIComponent(c.with); });
      li.append(b);
      return li;
    }));
    if (!rows.length) list.append(el("li", "small", "No conversations yet."));
    if (wanted && wanted !== state.chatWith) openChat(wanted);
    else if (state.chatWith) select.value = state.chatWith;
  } catch (err) { if (err.status !== 401) flash(err.message); }
}
async function openChat(name) {
  state.chatWith = name;
  state.chat = new Map();
  state.unread.messages.delete(name);
  badge();
  $("chat-title").textContent = "Chat with " + name;
  $("chat-with").value = name;
  $("chat-text").disabled = false;
  $("chat-send").disabled = false;
  document.querySelectorAll("#conversations button").forEach((b) =>
    b.classList.toggle("open", b.firstChild && b.textContent.startsWith(name)));
  try {
    const result = await api("GET", "chat?with=" + encodeURIComponent(name) + "&limit=100");
    if (state.chatWith !== name) return;
    for (const m of result.messages || []) state.chat.set(m.id, m);
    renderChat();
  } catch (err) { flash(err.message); }
}
function renderChat() {
  const list = $("chat");
  const messages = [...state.chat.values()].sort((a, b) => a.lamport - b.lamport);   // oldest first
  list.replaceChildren(...messages.map((m) => {
    const li = el("li", "bubble" + (m.from === state.user ? " mine" : ""));
    li.dataset.id = m.id;
    li.append(el("span", "text", m.text));
    const t = el("span", "when");
    stamp(t, m);
    li.append(t);
    return li;
  }));
  if (!messages.length) list.append(el("li", "empty", "No messages yet. Say hello."));
  list.scrollTop = list.scrollHeight;
}
async function submitMessage(event) {
  event.preventDefault();
  const box = $("chat-text"), text = box.value;
  if (!text.trim() || !state.chatWith) return;
  $("chat-send").disabled = true;
  try {
    const result = await api("POST", "dm", { to: state.chatWith, text });
    box.value = "";
    state.chat.set(result.message.id, result.message);
    renderChat();
  } catch (err) { flash(err.message); }
  finally { $("chat-send").disabled = false; box.focus(); }
}

// --- cluster ----------------------------------------------------------------------------------
async function pollStatus() {
  if (state.polling) return;             // a slow answer (no broker) is not asked again meanwhile
  state.polling = true;
  let status;
  try { status = await api("GET", "status"); } catch (err) { $("status-age").textContent = err.message; return; }
  finally { state.polling = false; }
  const now = Date.now() / 1000;
  state.statusAt = now;
  const rows = status.servers || [];
  for (const r of rows) state.lastSeen.set(r.id, r);
  const present = new Set(rows.map((r) => r.id));
  for (const [id, r] of state.lastSeen) {        // forgotten by the broker: gone
    if (!present.has(id)) rows.push({ ...r, alive: false, phase: "gone" });
  }
  rows.sort((a, b) => a.id - b.id);
  state.samples.push({ t: now, offsets: Object.fromEntries(rows.filter((r) => r.alive)
    .map((r) => [r.id, r.clock_offset_ms]).filter(([, v]) => typeof v === "number")) });
  state.samples = state.samples.filter((s) => s.t >= now - CHART_SECONDS);
  const key = `${status.coordinator}/${status.epoch}`;
  if (state.lastCoordinator !== key) {
    const first = state.lastCoordinator === undefined;
    state.elections.unshift({ t: now, text: status.coordinator == null ? "no coordinator"
      : `server-${status.coordinator} coordinator, epoch ${status.epoch}${first ? " (when this page opened)" : ""}` });
    state.lastCoordinator = key;
  }
  const sync = Math.max(0, ...rows.filter((r) => r.alive && r.last_sync).map((r) => r.last_sync));
  if (sync > state.lastSync) {
    const offsets = rows.filter((r) => r.alive && typeof r.clock_offset_ms === "number").map((r) => r.clock_offset_ms);
    const spread = offsets.length ? Math.max(...offsets) - Math.min(...offsets) : 0;
    state.rounds.unshift({ t: sync, text: `by server-${status.coordinator ?? "?"}: ${offsets.length} clocks, spread ${spread.toFixed(2)} ms` });
    state.lastSync = sync;
  }
  state.elections = state.elections.slice(0, 10);
  state.rounds = state.rounds.slice(0, 10);
  renderCluster(status, rows);
}
function renderCluster(status, rows) {
  $("coordinator").textContent = status.coordinator == null ? "none" : "server-" + status.coordinator;
  $("epoch").textContent = status.epoch ?? "–";
  const serving = rows.filter((r) => r.alive && r.phase === "serving").length;
  $("serving-count").textContent = `${serving} of ${rows.length}`;
  $("status-age").textContent = new Date().toLocaleTimeString([], { hour12: false });
  $("servers").tBodies[0].replaceChildren(...rows.map((r) => {
    const tr = el("tr", r.alive ? "" : "gone");
    tr.dataset.server = r.id;
    const phase = r.alive ? r.phase : "gone";
    const lag = r.repl_lag_p99_ms != null ? `p99 ≤ ${r.repl_lag_p99_ms} ms` : "–";
    const cells = [
      `server-${r.id}${status.coordinator === r.id ? " ★" : ""}`, phase, (r.events ?? "–").toLocaleString(),
      (r.digest || "").slice(0, 12), lag + (r.under_replicated ? ` · ${r.under_replicated} under-replicated` : ""),
      (r.members || []).join(", ") || "–", r.reachable ?? "–",
      typeof r.clock_offset_ms === "number" ? `${r.clock_offset_ms.toFixed(2)} ms` : "–"];
    cells.forEach((text, i) => {
      const td = el("td", i === 1 ? `phase phase-${phase}` : "", String(text));
      if (i === 0 && status.coordinator === r.id) td.title = "coordinator";
      tr.append(td);
    });
    return tr;
  }));
  renderChart();
  const list = (id, items) => $(id).replaceChildren(...items.map((e) => {
    const li = el("li");
    li.append(el("strong", "", new Date(e.t * 1000).toLocaleTimeString([], { hour12: false }) + " "), e.text);
    return li;
  }));
  list("elections", state.elections);
  list("rounds", state.rounds);
}
function renderChart() {
  const svg = $("chart"), W = 640, H = 200, L = 48, R = 10, T = 10, B = 24;
  const NS = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const now = Date.now() / 1000;
  const ids = [...new Set(state.samples.flatMap((s) => Object.keys(s.offsets)))].sort((a, b) => a - b);
  let top = 0.5;
  for (const s of state.samples) for (const v of Object.values(s.offsets)) top = Math.max(top, Math.abs(v));
  top *= 1.15;
  const x = (t) => L + (W - L - R) * (1 - (now - t) / CHART_SECONDS);
  const y = (v) => T + (H - T - B) * (1 - (v + top) / (2 * top));
  const parts = [
    node("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: "#c9ced8" }),
    node("text", { x: L - 6, y: y(top / 1.15) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7385" }, `+${(top / 1.15).toFixed(2)}`),
    node("text", { x: L - 6, y: y(0) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7385" }, "0"),
    node("text", { x: L - 6, y: y(-top / 1.15) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7385" }, `−${(top / 1.15).toFixed(2)}`),
    node("text", { x: L, y: H - 6, "font-size": 11, fill: "#6b7385" }, `−${CHART_SECONDS} s`),
    node("text", { x: W - R, y: H - 6, "font-size": 11, fill: "#6b7385", "text-anchor": "end" }, "now"),
  ];
  ids.forEach((id, i) => {
    const points = state.samples.filter((s) => id in s.offsets).map((s) => `${x(s.t).toFixed(1)},${y(s.offsets[id]).toFixed(1)}`);
    parts.push(node("polyline", { points: points.join(" "), fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2,
      "data-server": id }));
  });
  svg.replaceChildren(...parts);
  $("legend").replaceChildren(...ids.map((id, i) => {
    const s = el("span", "", "server-" + id);
    s.style.setProperty("--c", COLORS[i % COLORS.length]);
    return s;
  }));
}

// --- start --------------------------------------------------------------------------------------
window.addEventListener("DOMContentLoaded", async () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn(false); });
  $("register-button").addEventListener("click", () => {
    if ($("signin-form").reportValidity()) signIn(true);
  });
  $("signout").addEventListener("click", async () => {
    try { await api("POST", "logout"); } catch (err) { /* signed out here anyway */ }
    signedOut();
  });
  $("composer").addEventListener("submit", submitPost);
  $("post-text").addEventListener("input", countPost);
  $("chat-form").addEventListener("submit", submitMessage);
  $("chat-with").addEventListener("change", (e) => {
    if (e.target.value) location.hash = "#/messages/" + encodeURIComponent(e.target.value);
  });
  window.addEventListener("hashchange", () => {
    const name = decodeURIComponent(location.hash.split("/")[2] || "");
    if (currentPage() === "messages" && name && !$("page-messages").hidden) {
      openChat(name);
      loadConversations();
    } else show();
  });
  setInterval(refreshTimes, 30000);
  try {
    const me = await api("GET", "me");
    await signedIn(me.user);
  } catch (err) { show(); }
});
