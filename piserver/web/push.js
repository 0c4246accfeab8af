// The installable app and Web Push, on the page's side: the service worker's registration,
// "Notify me on this device" (permission asked on that click only), and telling the server
// which session is on screen (session.viewing): a session being looked at is not pushed.

export function registerWorker() {
  if (!("serviceWorker" in navigator)) return Promise.resolve(null);
  return navigator.serviceWorker.register("/ui/sw.js", { scope: "/ui/" }).catch(() => null);
}

export function pushSupported() {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const text = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

async function serverKey() {
  const response = await fetch("/push/key", { cache: "no-store" });
  if (!response.ok) throw new Error(`this server sends no notifications (${response.status})`);
  return (await response.json()).publicKey;
}

function sameKey(subscription, key) {
  const current = subscription.options && subscription.options.applicationServerKey;
  if (!current) return true;
  const bytes = new Uint8Array(current);
  const wanted = keyBytes(key);
  return bytes.length === wanted.length && bytes.every((b, i) => b === wanted[i]);
}

async function register(rpc, subscription) {
  const { endpoint, keys } = subscription.toJSON();
  await rpc.call("push.subscribe", { subscription: { endpoint, keys } });
}

// The subscription this browser has for this server, or null.
export async function currentSubscription() {
  if (!pushSupported() || Notification.permission !== "granted") return null;
  const registration = await navigator.serviceWorker.getRegistration("/ui/");
  return registration ? registration.pushManager.getSubscription() : null;
}

// From a click: asks for permission, subscribes with the server's key and registers the
// subscription under this device's token.
export async function enableNotifications(rpc) {
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error("Notifications are blocked for this site.");
  const registration = await navigator.serviceWorker.ready;
  const key = await serverKey();
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription, key)) {
    await subscription.unsubscribe();
    subscription = null;
  }
  if (!subscription) {
    subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: keyBytes(key),
    });
  }
  await register(rpc, subscription);
  return subscription;
}

export async function disableNotifications(rpc) {
  const subscription = await currentSubscription();
  if (!subscription) return;
  await rpc.call("push.unsubscribe", { endpoint: subscription.endpoint });
  await subscription.unsubscribe();
}

// After each (re)connection: the server knows this browser's subscription again.
export async function renewSubscription(rpc) {
  const subscription = await currentSubscription();
  if (subscription) await register(rpc, subscription);
  return subscription;
}

// Reports the open session as visible while the page is on screen, and not otherwise.
export class ViewingReporter {
  constructor(getRpc) {
    this.getRpc = getRpc;
    this.sessionId = null;
    this.reported = null;
    document.addEventListener("visibilitychange", () => this.update());
  }

  show(sessionId) {
    if (this.reported && this.reported !== sessionId) this.send(this.reported, false);
    this.sessionId = sessionId;
    this.update();
  }

  // The server forgets what a lost connection viewed: say it again on a new one.
  reconnected() {
    this.reported = null;
    this.update();
  }

  update() {
    const visible = Boolean(this.sessionId) && document.visibilityState === "visible";
    if (visible && this.reported !== this.sessionId) {
      this.send(this.sessionId, true);
      this.reported = this.sessionId;
    } else if (!visible && this.reported) {
      this.send(this.reported, false);
      this.reported = null;
    }
  }

  send(sessionId, visible) {
    const rpc = this.getRpc();
    if (!rpc) return;
    rpc.call("session.viewing", { sessionId, visible }).catch(() => {
      // A deleted session, or a server without push: nothing to do.
    });
  }
}
