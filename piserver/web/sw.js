// The web client's service worker (scope /ui/): keeps a copy of the app shell so the page
// opens without a network (and says it is offline), shows the server's Web Push
// notifications, and answers their actions: Allow / Deny POST the approval's one-time
// action URL without opening the page; a tap opens the session.

const CACHE = "pi-server-shell";
const SHELL = [
  "/ui/",
  "/ui/assets/app.js",
  "/ui/assets/rpc.js",
  "/ui/assets/push.js",
  "/ui/assets/outbox.js",
  "/ui/assets/conversation.js",
  "/ui/assets/markdown.js",
  "/ui/assets/vendor/marked.esm.js",
  "/ui/assets/vendor/purify.es.mjs",
  "/ui/assets/style.css",
  "/ui/assets/icon.svg",
  "/ui/assets/icon-192.png",
  "/ui/manifest.webmanifest",
];
// Answers that are never kept: they are about the token or change with every call.
const NEVER_CACHED = ["/ui/auth", "/ui/sw.js"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

// Network first (the server revalidates cheaply, so a new version shows at once); the copy
// when the network fails. Every page of the app (/ui/sessions/<id> too) is the one page.
self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== location.origin) return;
  if (!url.pathname.startsWith("/ui") || NEVER_CACHED.includes(url.pathname)) return;
  const page = request.mode === "navigate";
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(request);
      if (response.ok && !page) cache.put(request, response.clone());
      if (response.ok && page && url.pathname === "/ui/") cache.put("/ui/", response.clone());
      return response;
    } catch (error) {
      const copy = await cache.match(page ? "/ui/" : request);
      if (copy) return copy;
      throw error;
    }
  })());
});

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch {
    message = { title: "pi-server", body: event.data ? event.data.text() : "" };
  }
  const actions = Array.isArray(message.actions) ? message.actions : [];
  event.waitUntil(self.registration.showNotification(message.title || "pi-server", {
    body: message.body || "",
    tag: message.sessionId ? `session-${message.sessionId}-${message.event || ""}` : undefined,
    icon: "/ui/assets/icon-192.png",
    badge: "/ui/assets/icon-192.png",
    data: { url: message.url || "/ui/", sessionId: message.sessionId, actions },
    actions: actions.map(({ action, title }) => ({ action, title })),
    requireInteraction: message.event === "input_needed",
  }));
});

async function answer(notification, action) {
  const { actions = [], url } = notification.data || {};
  const chosen = actions.find((a) => a.action === action);
  if (!chosen || !chosen.url) return openPage(url);
  // The server's --public-url may name it otherwise than this page does: the action is
  // this server's, so it is POSTed to this origin (the only one the policy allows).
  const target = new URL(chosen.url, location.origin);
  let response;
  try {
    response = await fetch(location.origin + target.pathname + target.search, {
      method: "POST",
      credentials: "omit",
    });
  } catch {
    response = { ok: false, status: "no network" };
  }
  if (!response.ok) {
    // Already answered, expired or refused: show the session instead.
    await self.registration.showNotification("pi-server", {
      body: `The answer was not taken (${response.status}); open the session to see why.`,
      tag: `answer-${notification.tag || ""}`,
      data: { url },
    });
  }
}

async function openPage(url) {
  const target = new URL(url || "/ui/", location.origin);
  if (target.origin !== location.origin || !target.pathname.startsWith("/ui")) return;
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) {
    if ("navigate" in client && new URL(client.url).origin === location.origin) {
      await client.focus();
      return client.navigate(target.href);
    }
  }
  return self.clients.openWindow(target.href);
}

function clicked(notification, action) {
  notification.close();
  return action ? answer(notification, action) : openPage((notification.data || {}).url);
}

self.addEventListener("notificationclick", (event) => {
  event.waitUntil(clicked(event.notification, event.action));
});

// A page may click a shown notification's action on the user's behalf: {type:
// "notification-action", tag, action}. (Headless browsers cannot click a notification,
// so this is also how the tests press Allow.) The answer goes back on the message's port.
self.addEventListener("message", (event) => {
  const message = event.data || {};
  if (message.type !== "notification-action" || event.origin !== location.origin) return;
  const port = event.ports && event.ports[0];
  event.waitUntil((async () => {
    const shown = await self.registration.getNotifications({ tag: message.tag });
    if (!shown.length) {
      if (port) port.postMessage({ ok: false, error: "no such notification" });
      return;
    }
    try {
      await clicked(shown[0], message.action);
      if (port) port.postMessage({ ok: true });
    } catch (error) {
      if (port) port.postMessage({ ok: false, error: String(error) });
    }
  })());
});
