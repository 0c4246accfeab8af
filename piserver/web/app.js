// The web client: sign-in, the session list, one open session at a time (/ui/sessions/<id>),
// the prompt box, dialogs of pi extensions, approvals of tool calls, models, and the git
// workflow where the server offers it.

import { checkToken, RpcConnection } from "./rpc.js";
import { Conversation } from "./conversation.js";
import { Outbox } from "./outbox.js";

const TOKEN_KEY = "pi-server.token";
const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

const app = {
  rpc: null,
  sessionId: null,
  session: null,
  sessions: [],
  repos: [],
  conversation: null,
  outbox: null,
  dialogs: [],
  // The open session's approval cards by approvalId (requests and their decisions).
  approvals: new Map(),
  gitOffered: false,
  today: null,
  device: null,
};

// -- small page helpers -------------------------------------------------------

function toast(text, kind = "info") {
  const node = el("div", `toast ${kind}`, text);
  $("toasts").append(node);
  setTimeout(() => node.remove(), kind === "error" ? 8000 : 4000);
}

function failed(error) {
  toast(error && error.message ? refusal(error) : String(error), "error");
}

// A refusal for want of a scope: its message names the scope (docs/security.md).
function refusal(error) {
  return error.code === "forbidden" ? `Not allowed: ${error.message}` : error.message;
}

const SCOPES = ["read", "prompt", "approve", "ship", "manage"];

// hello's device: who this is and what it may do. What it may not do is hidden
// (style.css hides [data-scope] elements whose scope the html element marks as lacking;
// the body's classes are the view's).
function showDevice(device) {
  if (!device) return;
  app.device = device;
  for (const scope of SCOPES) {
    document.documentElement.classList.toggle(`lacks-${scope}`, !device.scopes.includes(scope));
  }
  const all = device.scopes.length === SCOPES.length;
  const node = $("device");
  node.textContent = `${device.name || "server token"} · ${all ? "all scopes" : device.scopes.join(", ")}`;
  const reach = [];
  if (device.repos) reach.push(`repositories: ${device.repos.join(", ") || "none"}`);
  if (device.ownSessions) reach.push("only its own sessions");
  node.title = reach.join("; ");
  node.hidden = false;
}

const CONNECTION_TEXT = {
  starting: "Starting…",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  online: "Online",
  offline: "Offline",
  waiting: "Disconnected",
  unauthorized: "Signed out",
  error: "Error",
};

function showConnection(state, detail) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = CONNECTION_TEXT[state] || state;
  node.title = detail || "";
}

function sessionIdFromPath() {
  const match = location.pathname.match(/^\/ui\/sessions\/([^/]+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function navigate(sessionId) {
  const path = sessionId ? `/ui/sessions/${encodeURIComponent(sessionId)}` : "/ui";
  if (location.pathname !== path) history.pushState({}, "", path);
  route();
}

// -- signing in ---------------------------------------------------------------

function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return null;
  // The token leaves the address bar and the history at once.
  history.replaceState(history.state, "", location.pathname + location.search);
  return token;
}

function showSignIn(message) {
  $("sign-in").hidden = false;
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function signIn(token, fromLink) {
  let accepted;
  try {
    accepted = await checkToken(token);
  } catch (error) {
    showSignIn(`Cannot reach the server: ${error.message}`);
    return;
  }
  if (!accepted) {
    localStorage.removeItem(TOKEN_KEY);
    showSignIn(fromLink ? "The token in that link is wrong." : "That token is wrong.");
    return;
  }
  if (token) localStorage.setItem(TOKEN_KEY, token);
  start(token);
}

function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  if (app.rpc) app.rpc.stop();
  app.rpc = null;
  showConnection("unauthorized");
  showSignIn("");
}

// -- the connection -----------------------------------------------------------

function start(token) {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = !token;
  app.rpc = new RpcConnection({
    token,
    client: { name: "pi-server web", version: "1" },
    onState: (state, detail) => {
      showConnection(state, detail);
      if (state === "unauthorized") showSignIn("The server no longer accepts this token.");
    },
    onEvent: received,
    // What waits in the outbox goes once the page knows where it is.
    onHello: (result, resumed) => connected(result, resumed).finally(sendOutbox),
    onHeartbeat: ({ sessions, today }) => {
      app.sessions = sessions;
      app.today = today || null;
      renderList();
      showSessionTitle();
    },
  });
  app.outbox = new Outbox({
    onChange: renderOutbox,
    onAnswered: outboxAnswered,
    onFailed: outboxFailed,
  });
  renderOutbox(app.outbox.items);
  app.rpc.connect();
}

// -- the outbox: prompts and answers on their way -------------------------------

function sendOutbox() {
  app.outbox.flush(app.rpc);
}

function renderOutbox(items) {
  const list = $("outbox");
  list.replaceChildren(
    ...items.map((item) => {
      const node = el("li", "outbox-item");
      node.dataset.key = item.key;
      node.append(el("span", "outbox-state", "Waiting to send"), el("span", "outbox-text", item.label));
      return node;
    }),
  );
  list.hidden = items.length === 0;
}

function outboxAnswered(item, result) {
  if (item.method === "prompt" && result && result.disposition === "queued") {
    toast(item.params.streamingBehavior === "steer" ? "Steering message sent." : "Queued.");
  }
}

function outboxFailed(item, error) {
  // A dialog answered elsewhere (or gone) meanwhile: nothing to say.
  if (item.method === "extension_ui_response" && error.code === "not_found") return;
  if (item.method === "prompt" && item.sessionId === app.sessionId && !$("prompt").value) {
    $("prompt").value = item.params.message;
  }
  failed(error);
}

async function connected(result, resumed) {
  showDevice(result.device);
  if (!resumed) {
    await refreshList();
    route();
    performance.mark("pi-interactive");
    document.documentElement.dataset.ready = "true";
    return;
  }
  const how = result.resumed && app.sessionId ? result.resumed[app.sessionId] : null;
  if (how === "not_found") {
    toast("This session no longer exists.", "error");
    navigate(null);
  }
  refreshList();
}

function received(envelope) {
  const { type, payload } = envelope;
  if (type === "session_progress" && envelope.sessionId !== app.sessionId) {
    // A code session's checkout being made for session.create.
    $("create-status").textContent = payload.message || "";
    return;
  }
  if (envelope.sessionId !== app.sessionId || !app.conversation) return;
  if (type === "extension_ui_request") return dialogRequested(payload);
  if (type === "extension_ui_resolved") return dialogResolved(payload.id);
  if (type === "approval_request") return approvalRequested(payload);
  if (type === "approval_resolved") return approvalResolved(payload);
  if (type === "files_changed") return filesChanged(payload);
  if (type === "session_progress") return ($("status-line").textContent = payload.message || "");
  if (type === "budget_warning" || type === "budget_reached") return budgetNotice(type, payload);
  // A new run got past the budgets: what stopped an earlier one is history.
  if (type === "agent_start") $("budget-notice").hidden = true;
  app.conversation.apply(type, payload);
  if (type === "thinking_level_changed") $("thinking").value = payload.level;
  if (type === "agent_settled") {
    $("status-line").textContent = "";
    // The first prompt names the session.
    refreshList({ repos: false }).then(showSessionTitle);
  }
}

// -- the session list ---------------------------------------------------------

async function refreshList({ repos = true } = {}) {
  try {
    const [{ sessions, today }, offered] = await Promise.all([
      app.rpc.call("session.list"),
      repos ? app.rpc.call("repos.list").catch(() => ({ repos: [], warnings: [] })) : null,
    ]);
    app.sessions = sessions;
    app.today = today || null;
    if (offered) {
      app.repos = offered.repos || [];
      renderRepos(offered.warnings || []);
    }
    renderList();
  } catch (error) {
    failed(error);
  }
}

function renderRepos(warnings) {
  const select = $("repo-select");
  select.replaceChildren(...app.repos.map((repo) => {
    const option = el("option", "", repo.name || repo.id);
    option.value = repo.id;
    return option;
  }));
  select.hidden = $("new-code").hidden = app.repos.length === 0;
  const text = warnings.map((w) => (typeof w === "string" ? w : w.message || JSON.stringify(w)));
  $("repo-warnings").hidden = text.length === 0;
  $("repo-warnings").textContent = text.join("; ");
}

function sessionTitle(session) {
  return session.name || (session.mode === "code" ? `Code: ${session.repoId}` : "New chat");
}

function renderList() {
  const list = $("sessions");
  const items = [...app.sessions]
    .sort((a, b) => String(b.lastActivityAt).localeCompare(String(a.lastActivityAt)))
    .map((session) => {
      const item = el("li");
      const link = el("a", "session-link");
      link.href = `/ui/sessions/${encodeURIComponent(session.sessionId)}`;
      link.dataset.sessionId = session.sessionId;
      if (session.sessionId === app.sessionId) link.setAttribute("aria-current", "page");
      link.append(el("span", "session-title", sessionTitle(session)));
      const when = session.lastActivityAt ? new Date(session.lastActivityAt).toLocaleString() : "";
      link.append(el("span", "session-meta", `${session.mode} · ${when}`));
      if (session.pendingApprovals > 0) {
        const waiting = el("span", "session-pending", `${session.pendingApprovals} waiting`);
        waiting.title = "Tool calls waiting for your approval";
        link.append(waiting);
      }
      item.append(link);
      return item;
    });
  list.replaceChildren(...items);
  $("no-sessions").hidden = items.length > 0;
  showToday();
}

// -- usage and budgets --------------------------------------------------------

function usd(amount) {
  const value = Number(amount) || 0;
  return `$${value.toFixed(value > 0 && value < 1 ? 4 : 2)}`;
}

function showToday() {
  const today = app.today;
  const line = $("usage-today");
  if (!today) return (line.textContent = "");
  const spent = today.usage || {};
  let text = `Today: ${usd(spent.costUsd)}`;
  let over = false;
  if (today.limitUsd != null) {
    text += ` of ${usd(today.limitUsd)}`;
    over = spent.costUsd >= today.limitUsd;
  }
  if (today.limitTokens != null) {
    text += ` · ${spent.totalTokens} of ${today.limitTokens} tokens`;
    over = over || spent.totalTokens >= today.limitTokens;
  }
  line.textContent = over ? `${text} (daily budget spent)` : text;
  line.dataset.over = String(over);
}

function showSessionCost() {
  const session = app.session;
  const cost = $("session-cost");
  if (!session || !session.usage) return (cost.textContent = "");
  const budget = session.budgetUsd != null ? ` of ${usd(session.budgetUsd)}` : "";
  cost.textContent = `${usd(session.usage.costUsd)}${budget} · ${session.usage.totalTokens} tokens`;
}

function budgetNotice(type, payload) {
  const notice = $("budget-notice");
  const which = payload.scope === "session" ? "This session's budget" : "Today's budget";
  const spent = payload.limitTokens != null
    ? `${payload.spentTokens} of ${payload.limitTokens} tokens`
    : `${usd(payload.spentUsd)} of ${usd(payload.limitUsd)}`;
  const resets = payload.resetsAt ? ` It resets at ${new Date(payload.resetsAt).toLocaleString()}.` : "";
  notice.dataset.kind = type === "budget_reached" ? "reached" : "warning";
  notice.textContent = type === "budget_reached"
    ? `Stopped: ${which.toLowerCase()} is spent (${spent}). New prompts are refused until it is raised.${resets}`
    : `${which} is 80 % spent (${spent}).${resets}`;
  notice.hidden = false;
  refreshList({ repos: false }).then(showSessionTitle);
}

async function createSession(params) {
  const status = $("create-status");
  status.textContent = params.mode === "code" ? "Preparing the checkout…" : "Starting…";
  try {
    const { sessionId } = await app.rpc.call("session.create", params);
    await refreshList();
    navigate(sessionId);
    $("prompt").focus();
  } catch (error) {
    failed(error);
  } finally {
    status.textContent = "";
  }
}

// -- pi sessions on this machine (sessions.importable, session.import) -------------

async function loadImportable(cursor) {
  try {
    const page = await app.rpc.call("sessions.importable", cursor ? { cursor } : {});
    const list = $("importable-list");
    const items = page.sessions.map((found) => {
      const item = el("li");
      const button = el("button", "session-link importable-item");
      button.type = "button";
      button.dataset.importId = found.importId;
      button.append(el("span", "session-title", found.firstPrompt || "(no prompt)"));
      const when = new Date(found.lastActivityAt).toLocaleString();
      button.append(el("span", "session-meta", `${found.cwd} · ${found.messages} messages · ${when}`));
      item.append(button);
      return item;
    });
    if (cursor) list.append(...items);
    else list.replaceChildren(...items);
    $("no-importable").hidden = list.children.length > 0;
    app.importCursor = page.next || null;
    $("importable-more").hidden = !page.next;
  } catch (error) {
    failed(error);
  }
}

async function importSession(importId) {
  const status = $("create-status");
  status.textContent = "Importing…";
  try {
    const { sessionId } = await app.rpc.call("session.import", {
      importId, withChanges: $("import-changes").checked,
    });
    await refreshList();
    navigate(sessionId);
    $("prompt").focus();
  } catch (error) {
    failed(error);
  } finally {
    status.textContent = "";
  }
}

async function exportSession() {
  try {
    const { fileName, jsonl } = await app.rpc.call("session.export", { sessionId: app.sessionId });
    const link = el("a");
    link.href = URL.createObjectURL(new Blob([jsonl], { type: "application/jsonl" }));
    link.download = fileName;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    toast(`Saved ${fileName}: open it with pi --session ${fileName}`);
  } catch (error) {
    failed(error);
  }
}

// -- one session --------------------------------------------------------------

function route() {
  const sessionId = sessionIdFromPath();
  document.body.className = sessionId ? "view-session" : "view-list";
  if (sessionId !== app.sessionId) openSession(sessionId);
  renderList();
}

async function openSession(sessionId) {
  app.sessionId = sessionId;
  app.session = app.sessions.find((s) => s.sessionId === sessionId) || null;
  closeDialogs();
  app.approvals = new Map();
  $("budget-notice").hidden = true;
  $("git").hidden = true;
  $("changes").hidden = true;
  app.gitOffered = false;
  $("placeholder").hidden = Boolean(sessionId);
  $("session-view").hidden = !sessionId;
  if (!sessionId) {
    app.rpc.unfollow();
    app.conversation = null;
    $("title").textContent = "pi-server";
    return;
  }
  showSessionTitle();
  if (app.session) $("permission").value = app.session.permissionMode || "full";
  app.conversation = new Conversation($("conversation"), {
    onRunning: showRunning,
    onChange: scrollToEnd,
  });
  // Every event of the session from its start: the history, then the live run.
  app.rpc.follow(sessionId, 0);
  try {
    const attached = await app.rpc.call("session.attach", { sessionId, exclusive: true, lastSeq: 0 });
    if (attached.catchUp !== "snapshot") showEarlierHistory(sessionId);
  } catch (error) {
    if (app.sessionId !== sessionId) return;
    if (error.code === "not_found") {
      toast("No such session.", "error");
      navigate(null);
    } else {
      failed(error);
    }
    return;
  }
  if (app.sessionId !== sessionId) return;
  loadModels(sessionId);
  if (app.session && app.session.mode === "code") probeGit(sessionId);
}

// A conversation older than the session's events (imported from pi in a terminal, or
// forked) is not in its journal: when the replay showed nothing, ask pi for it.
async function showEarlierHistory(sessionId) {
  if (!app.conversation.empty) return;
  try {
    const { messages } = await app.rpc.call("get_messages", {}, sessionId);
    if (app.sessionId !== sessionId || !app.conversation.empty || !messages.length) return;
    app.conversation.apply("session_snapshot", {
      messages, state: { isStreaming: app.conversation.running },
    });
  } catch (error) {
    failed(error);
  }
}

function showSessionTitle() {
  app.session = app.sessions.find((s) => s.sessionId === app.sessionId) || app.session;
  if (!app.sessionId) return;
  $("title").textContent = app.session ? sessionTitle(app.session) : "Session";
  $("session-name").textContent = $("title").textContent;
  showSessionCost();
}

function showRunning(running) {
  $("run-state").dataset.running = String(running);
  $("run-state").textContent = running ? "Working…" : "";
  $("send").textContent = running ? "Steer" : "Send";
  $("send").title = running ? "Send now, to steer the current run" : "";
  $("follow-up").hidden = !running;
  $("abort").hidden = !running;
}

function scrollToEnd() {
  const box = $("conversation");
  if (box.scrollHeight - box.scrollTop - box.clientHeight < 160) box.scrollTop = box.scrollHeight;
}

async function sendPrompt(behavior) {
  const box = $("prompt");
  const message = box.value;
  if (!message.trim() || !app.sessionId) return;
  const params = { message };
  if (app.rpc.state !== "online") {
    // Sent when the connection is back, maybe during a run (an earlier one's): after it.
    params.streamingBehavior = "followUp";
  } else if (app.conversation && app.conversation.running) {
    params.streamingBehavior = behavior || "steer";
  }
  box.value = "";
  app.outbox.add("prompt", params, app.sessionId, message);
  sendOutbox();
}

async function loadModels(sessionId) {
  const modelSelect = $("model");
  const thinkingSelect = $("thinking");
  try {
    const [state, { models }] = await Promise.all([
      app.rpc.call("get_state", {}, sessionId),
      app.rpc.call("get_available_models", {}, sessionId),
    ]);
    if (app.sessionId !== sessionId) return;
    const current = state.model ? `${state.model.provider}/${state.model.id}` : "";
    modelSelect.replaceChildren(...models.map((model) => {
      const option = el("option", "", model.name || model.id);
      option.value = `${model.provider}/${model.id}`;
      option.selected = option.value === current;
      return option;
    }));
    modelSelect.hidden = models.length === 0;
    if (state.isStreaming) showRunning(true);
    loadThinking(sessionId, state.thinkingLevel);
  } catch (error) {
    modelSelect.hidden = thinkingSelect.hidden = true;
  }
}

async function loadThinking(sessionId, current) {
  const select = $("thinking");
  try {
    const result = await app.rpc.call("get_available_thinking_levels", {}, sessionId);
    if (app.sessionId !== sessionId) return;
    const levels = Array.isArray(result) ? result : result.levels || [];
    select.replaceChildren(...levels.map((level) => {
      const option = el("option", "", `thinking: ${level}`);
      option.value = level;
      option.selected = level === current;
      return option;
    }));
    select.hidden = levels.length < 2;
  } catch {
    // Servers without the method (unknown_method) offer no thinking levels.
    select.hidden = true;
  }
}

// -- extension dialogs --------------------------------------------------------

function dialogRequested(request) {
  if (!["confirm", "select", "input", "editor"].includes(request.method)) {
    if (request.method === "notify") toast(request.message || "", request.notifyType || "info");
    if (request.method === "setStatus") $("status-line").textContent = request.statusText || "";
    return;
  }
  if (app.dialogs.some((d) => d.id === request.id)) return;
  app.dialogs.push(request);
  if (app.dialogs.length === 1) showDialog();
}

function dialogResolved(id) {
  const wasShown = app.dialogs.length && app.dialogs[0].id === id;
  app.dialogs = app.dialogs.filter((d) => d.id !== id);
  if (wasShown) showDialog();
}

function closeDialogs() {
  app.dialogs = [];
  showDialog();
}

function showDialog() {
  const dialog = $("dialog");
  const request = app.dialogs[0];
  if (!request) {
    if (dialog.open) dialog.close();
    return;
  }
  $("dialog-title").textContent = request.title || "The agent asks";
  $("dialog-message").textContent = request.message || "";
  const body = $("dialog-body");
  const buttons = $("dialog-buttons");
  body.replaceChildren();
  buttons.replaceChildren();
  const button = (text, answer, className = "") => {
    const node = el("button", className, text);
    node.type = "button";
    node.addEventListener("click", () => answerDialog(request, answer()));
    buttons.append(node);
    return node;
  };
  if (request.method === "confirm") {
    button("No", () => ({ confirmed: false }), "quiet");
    button("Yes", () => ({ confirmed: true })).dataset.default = "true";
  } else if (request.method === "select") {
    for (const option of request.options || []) {
      const node = el("button", "choice", String(option));
      node.type = "button";
      node.addEventListener("click", () => answerDialog(request, { value: String(option) }));
      body.append(node);
    }
    button("Cancel", () => ({ cancelled: true }), "quiet");
  } else {
    const field = el(request.method === "editor" ? "textarea" : "input", "dialog-field");
    field.setAttribute("aria-label", request.title || "Answer");
    if (request.method === "editor") {
      field.rows = 8;
      field.value = request.prefill || "";
    } else {
      field.placeholder = request.placeholder || "";
    }
    body.append(field);
    button("Cancel", () => ({ cancelled: true }), "quiet");
    button("OK", () => ({ value: field.value }));
  }
  if (!dialog.open) dialog.showModal();
}

async function answerDialog(request, answer) {
  if (request.local) return answerLocalDialog(request, answer);
  const label = `Answer to “${request.title || request.method}”`;
  app.outbox.add("extension_ui_response", { id: request.id, ...answer }, app.sessionId, label);
  dialogResolved(request.id);
  sendOutbox();
}

// Dialogs the page itself asks (deleting a session) are answered here, not by the server.
async function answerLocalDialog(request, answer) {
  dialogResolved(request.id);
  if (!answer.confirmed) return;
  const sessionId = request.id.slice("delete-".length);
  try {
    await app.rpc.call("session.delete", { sessionId });
    toast("Session deleted.");
    if (app.sessionId === sessionId) navigate(null);
    refreshList();
  } catch (error) {
    failed(error);
  }
}

// -- the git workflow (where the server offers it) ----------------------------

async function probeGit(sessionId) {
  try {
    const diff = await app.rpc.call("session.diff", { maxBytes: 262144 }, sessionId);
    if (app.sessionId !== sessionId) return;
    app.gitOffered = true;
    $("changes").hidden = false;
    showFileCount(diff.files.length);
  } catch {
    // unknown_method (a server without the git workflow) or invalid_state: no such feature.
    app.gitOffered = false;
  }
}

function showFileCount(count) {
  $("changes").textContent = count ? `Changes (${count})` : "Changes";
}

function filesChanged(payload) {
  if (!app.gitOffered) return;
  showFileCount((payload.files || []).length);
  if (!$("git").hidden) loadDiff();
}

async function loadDiff() {
  const sessionId = app.sessionId;
  try {
    const diff = await app.rpc.call("session.diff", { maxBytes: 262144 }, sessionId);
    if (app.sessionId !== sessionId) return;
    showFileCount(diff.files.length);
    $("git-files").replaceChildren(...diff.files.map((file) => {
      const item = el("li", `file ${file.status}`);
      item.append(el("span", "file-status", file.status));
      item.append(el("span", "file-path", file.oldPath ? `${file.oldPath} → ${file.path}` : file.path));
      item.append(el("span", "file-counts", `+${file.additions} −${file.deletions}`));
      return item;
    }));
    renderDiff(diff.diff || "");
    $("git-note").textContent = diff.files.length
      ? (diff.truncated ? "The diff is truncated." : "")
      : "No changes.";
    $("commit-form").hidden = diff.files.length === 0;
    const github = app.session && app.repos.some((r) => r.id === app.session.repoId && r.source === "github");
    $("push").hidden = false;
    $("pr-form").hidden = !github;
  } catch (error) {
    failed(error);
  }
}

function renderDiff(text) {
  const lines = text.split("\n").map((line) => {
    let kind = "";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ")) kind = "meta";
    else if (line.startsWith("@@")) kind = "hunk";
    else if (line.startsWith("+")) kind = "add";
    else if (line.startsWith("-")) kind = "del";
    return el("span", `line ${kind}`, `${line}\n`);
  });
  $("git-diff").replaceChildren(...lines);
}

async function gitCall(method, params, describe) {
  $("git-result").textContent = "";
  try {
    const result = await app.rpc.call(method, params, app.sessionId);
    $("git-result").replaceChildren(describe(result));
    loadDiff();
  } catch (error) {
    $("git-result").textContent = refusal(error);
  } finally {
    $("status-line").textContent = "";
    $("git-result").scrollIntoView({ block: "nearest" });
  }
}

function safeLink(url, text) {
  const link = el("a", "", text);
  try {
    const parsed = new URL(url);
    if (parsed.protocol === "https:" || parsed.protocol === "http:") {
      link.href = parsed.href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
    }
  } catch {
    // Not a URL: shown as text.
  }
  return link;
}

// -- approvals ------------------------------------------------------------------

const DECISIONS = {
  allow: "Allowed", deny: "Denied", allow_session: "Allowed for this session",
  allow_rule: "Allowed by a new rule",
};

function approvalRequested(request) {
  // A pending request is sent again on attach: the replayed card stands for it.
  if (app.approvals.has(request.approvalId)) return;
  const card = el("section", "approval");
  card.dataset.approvalId = request.approvalId;
  card.dataset.state = "pending";
  card.setAttribute("aria-label", `Approval for ${request.toolName}`);
  card.append(el("h4", "", `pi wants to run ${request.toolName}`));
  card.append(el("pre", "approval-summary", request.summary));
  const buttons = el("div", "approval-buttons");
  buttons.dataset.scope = "approve";
  const choices = [
    ["allow", "Allow", ""],
    ["allow_session", request.toolName === "bash" ? "Allow this command for the session" : "Allow for this session", "quiet"],
    ["deny", "Deny", "danger"],
  ];
  for (const [decision, label, kind] of choices) {
    const button = el("button", kind, label);
    button.type = "button";
    button.dataset.decision = decision;
    button.addEventListener("click", () => answerApproval(request.approvalId, decision));
    buttons.append(button);
  }
  card.append(buttons);
  card.append(el("p", "approval-outcome"));
  app.approvals.set(request.approvalId, card);
  $("conversation").append(card);
  scrollToEnd();
  refreshList({ repos: false });
}

function approvalResolved(resolved) {
  const card = app.approvals.get(resolved.approvalId);
  if (!card) return;
  card.dataset.state = resolved.decision === "deny" ? "denied" : "allowed";
  card.dataset.decision = resolved.decision;
  card.querySelector(".approval-buttons").remove();
  const reason = resolved.reason ? `: ${resolved.reason}` : "";
  card.querySelector(".approval-outcome").textContent =
    `${DECISIONS[resolved.decision] || resolved.decision} by ${resolved.by}${reason}`;
  refreshList({ repos: false });
}

async function answerApproval(approvalId, decision) {
  const card = app.approvals.get(approvalId);
  if (card) card.querySelectorAll("button").forEach((button) => (button.disabled = true));
  try {
    await app.rpc.call("approval.respond", { approvalId, decision }, app.sessionId);
  } catch (error) {
    if (card) card.querySelectorAll("button").forEach((button) => (button.disabled = false));
    failed(error);
  }
}

function newSessionParams(params) {
  const mode = $("new-permission").value;
  return mode ? { ...params, permissionMode: mode } : params;
}

// -- wiring -------------------------------------------------------------------

function wire() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim(), false);
  });
  $("sign-out").addEventListener("click", signOut);
  $("back").addEventListener("click", () => navigate(null));
  $("new-chat").addEventListener("click", () => createSession(newSessionParams({ mode: "chat" })));
  $("new-code").addEventListener("click", () =>
    createSession(newSessionParams({ mode: "code", repoId: $("repo-select").value })));
  $("permission").addEventListener("change", () => {
    const mode = $("permission").value;
    app.rpc.call("session.set_permission_mode", { sessionId: app.sessionId, mode })
      .then(() => {
        toast(`Permission mode: ${$("permission").selectedOptions[0].textContent}`);
        refreshList({ repos: false });
      })
      .catch(failed);
  });
  $("sessions").addEventListener("click", (event) => {
    const link = event.target.closest("a.session-link");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    navigate(link.dataset.sessionId);
  });
  window.addEventListener("popstate", route);
  // A token link opened in a tab that shows the page already.
  window.addEventListener("hashchange", () => {
    const token = tokenFromFragment();
    if (token === null) return;
    if (app.rpc) app.rpc.stop();
    app.rpc = null;
    signIn(token, true);
  });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendPrompt("steer");
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendPrompt("steer");
    }
  });
  $("follow-up").addEventListener("click", () => sendPrompt("followUp"));
  $("abort").addEventListener("click", () =>
    app.rpc.call("abort", {}, app.sessionId).catch(failed));

  $("model").addEventListener("change", () => {
    const [provider, ...rest] = $("model").value.split("/");
    const modelId = rest.join("/");
    app.rpc.call("set_model", { provider, modelId }, app.sessionId)
      .then(() => {
        toast(`Model: ${modelId}`);
        loadThinking(app.sessionId, null);
      })
      .catch(failed);
  });
  $("thinking").addEventListener("change", () => {
    const level = $("thinking").value;
    app.rpc.call("set_thinking_level", { level }, app.sessionId)
      .then(() => toast(`Thinking: ${level}`))
      .catch(failed);
  });

  $("import-toggle").addEventListener("click", () => {
    const open = $("importable").hidden;
    $("importable").hidden = !open;
    $("import-toggle").setAttribute("aria-expanded", String(open));
    if (open) loadImportable(null);
  });
  $("importable-more").addEventListener("click", () => loadImportable(app.importCursor));
  $("importable-list").addEventListener("click", (event) => {
    const item = event.target.closest("[data-import-id]");
    if (item) importSession(item.dataset.importId);
  });
  $("export").addEventListener("click", exportSession);
  $("delete").addEventListener("click", () => {
    const sessionId = app.sessionId;
    dialogRequested({
      id: `delete-${sessionId}`, method: "confirm", title: "Delete this session?",
      message: "Its conversation and working directory are removed.", local: true,
    });
  });
  $("changes").addEventListener("click", () => {
    $("git").hidden = !$("git").hidden;
    if (!$("git").hidden) loadDiff();
  });
  $("commit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    gitCall("session.commit", { message: $("commit-message").value, all: true }, (result) => {
      $("commit-message").value = "";
      return el("span", "", `Committed ${String(result.commit).slice(0, 10)} (${(result.files || []).length} files).`);
    });
  });
  $("push").addEventListener("click", () =>
    gitCall("session.push", {}, (result) => el("span", "", result.pushed
      ? `Pushed ${result.branch} to ${result.repository} as ${result.remoteBranch}.`
      : result.message || `The branch ${result.branch} needs no push.`)));
  $("pr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    gitCall("session.pull_request", {
      title: $("pr-title").value, body: $("pr-body").value, draft: $("pr-draft").checked,
    }, (result) => {
      $("pr-title").value = $("pr-body").value = "";
      return safeLink(result.url, `Pull request #${result.number}`);
    });
  });
}

async function main() {
  wire();
  const fromLink = tokenFromFragment();
  if (fromLink !== null) return signIn(fromLink, true);
  const stored = localStorage.getItem(TOKEN_KEY);
  if (stored) return start(stored);
  // A server without authentication (--no-auth) takes no token at all.
  try {
    if (await checkToken("")) return start("");
  } catch {
    // Unreachable: the form says so when used.
  }
  showSignIn("");
}

main();
