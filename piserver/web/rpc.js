// The /rpc connection: requests and their one response each, events in delta mode, and
// reconnecting with hello.resume so that no event is missed or seen twice.

const RETRY_DELAYS_MS = [250, 1000, 2000, 5000, 10000];
// The server answers every request (a clone may take minutes, a prompt that opens an
// extension dialog waits for it); a dead connection is the heartbeat's business. This
// only bounds a request that is never answered.
const CALL_TIMEOUT_MS = 600000;
// A phone that changes networks can leave a socket open that carries nothing: a cheap
// request now and then notices, and the resume that follows misses nothing.
const HEARTBEAT_MS = 20000;
const HEARTBEAT_TIMEOUT_MS = 10000;

export class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Asks the server whether a token is right: a browser cannot see why an upgrade failed.
export async function checkToken(token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch("/ui/auth", { headers, cache: "no-store" });
  if (response.status === 401) return false;
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  return true;
}

export class RpcConnection {
  // onEvent(envelope), onState(state, detail), onHello(helloResult, resumed): after
  // every hello, the first one included; onHeartbeat(session.list's result).
  constructor({ token, client, onEvent, onState, onHello, onHeartbeat }) {
    this.token = token;
    this.client = client;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onHello = onHello;
    this.onHeartbeat = onHeartbeat;
    this.heartbeat = null;
    this.connectionId = null;
    // The last seq seen per session: what a resume asks to continue from.
    this.lastSeq = new Map();
    this.socket = null;
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
    this.state = "starting";
    window.addEventListener("offline", () => this.dropSocket("offline"));
    window.addEventListener("online", () => {
      if (!this.socket && !this.stopped) this.connect();
    });
  }

  setState(state, detail = "") {
    this.state = state;
    this.onState(state, detail);
  }

  // `anyway`: try even though the browser says it is offline (it can be wrong).
  connect(anyway = false) {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped || this.socket) return;
    if (!navigator.onLine && !anyway) {
      this.waitForNetwork();
      return;
    }
    this.setState(this.connectionId ? "reconnecting" : "connecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = this.token ? `?token=${encodeURIComponent(this.token)}` : "";
    const socket = new WebSocket(`${scheme}://${location.host}/rpc${query}`);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.hello(socket);
    };
    socket.onmessage = (message) => {
      if (this.socket === socket) this.received(message.data);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.dropSocket(opened ? "closed" : "refused");
    };
  }

  async hello(socket) {
    // This page reads snapshots and pi's own messages (docs/protocol.md, hello.features).
    const params = { client: this.client, eventMode: "delta", features: ["snapshots", "piMessages"] };
    if (this.connectionId && this.lastSeq.size) {
      params.resume = {
        connectionId: this.connectionId,
        lastSeqBySession: Object.fromEntries(this.lastSeq),
      };
    }
    let result;
    try {
      result = await this.send(socket, "hello", params);
    } catch (error) {
      this.setState("error", error.message);
      return;
    }
    const resumed = Boolean(this.connectionId);
    this.connectionId = result.connectionId;
    this.attempt = 0;
    this.setState("online");
    this.startHeartbeat(socket);
    this.onHello(result, resumed);
  }

  startHeartbeat(socket) {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(async () => {
      try {
        this.onHeartbeat(await this.send(socket, "session.list", {}, null, HEARTBEAT_TIMEOUT_MS));
      } catch (error) {
        if (this.socket === socket && error.code === "timeout") this.dropSocket("stalled");
      }
    }, HEARTBEAT_MS);
  }

  async dropSocket(reason) {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    clearInterval(this.heartbeat);
    // Whatever the old socket still delivers is ignored: the resume replays it.
    socket.onmessage = null;
    socket.onclose = null;
    try {
      socket.close();
    } catch {
      // Already closing.
    }
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new RpcError("disconnected", "the connection to the server was lost"));
    }
    this.pending.clear();
    if (this.stopped) return;
    if (reason === "offline" || !navigator.onLine) {
      this.waitForNetwork();
      return;
    }
    if (reason === "refused" && !this.connectionId) {
      try {
        if (!(await checkToken(this.token))) {
          this.stopped = true;
          this.setState("unauthorized", "the server does not accept this token");
          return;
        }
      } catch {
        // The server is unreachable: retry below.
      }
    }
    const delay = RETRY_DELAYS_MS[Math.min(this.attempt, RETRY_DELAYS_MS.length - 1)];
    this.attempt += 1;
    this.setState("waiting", `reconnecting in ${Math.round(delay / 100) / 10} s`);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // Reconnects on the browser's "online" event, and every so often in case it never comes.
  waitForNetwork() {
    this.setState("offline", "no network: waiting for it to come back");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(true), RETRY_DELAYS_MS.at(-1));
  }

  stop() {
    this.stopped = true;
    this.dropSocket("stopped");
  }

  received(data) {
    let envelope;
    try {
      envelope = JSON.parse(data);
    } catch {
      return;
    }
    if (envelope.kind === "response") {
      const waiter = this.pending.get(envelope.id);
      if (!waiter) return;
      this.pending.delete(envelope.id);
      clearTimeout(waiter.timer);
      if (envelope.ok) waiter.resolve(envelope.result);
      else waiter.reject(new RpcError(envelope.error.code, envelope.error.message));
      return;
    }
    if (envelope.kind !== "event") return;
    const last = this.lastSeq.get(envelope.sessionId);
    if (last !== undefined && envelope.seq <= last && envelope.type !== "session_snapshot") {
      return;
    }
    if (last !== undefined) this.lastSeq.set(envelope.sessionId, envelope.seq);
    this.onEvent(envelope);
  }

  // Follow the events of a session from `seq` on (0: from its start).
  follow(sessionId, seq = 0) {
    this.lastSeq.clear();
    this.lastSeq.set(sessionId, seq);
  }

  unfollow() {
    this.lastSeq.clear();
  }

  send(socket, method, params, sessionId, timeoutMs = CALL_TIMEOUT_MS) {
    const id = `w${this.nextId++}`;
    const envelope = { v: 1, kind: "request", id, method, params: params || {} };
    if (sessionId) envelope.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError("timeout", `no answer to ${method}`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      socket.send(JSON.stringify(envelope));
    });
  }

  async call(method, params, sessionId) {
    if (!this.socket || this.state !== "online") {
      throw new RpcError("disconnected", "not connected to the server");
    }
    return this.send(this.socket, method, params, sessionId);
  }
}
