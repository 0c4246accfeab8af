// The outbox: prompts and dialog answers on their way to the server. Each gets an
// idempotency key when it is made and keeps it until the server has answered, in the
// browser's storage, so neither a dropped connection nor a reload loses one. They are sent
// in the order they were made, whenever the connection is up; one whose answer a drop cut
// off is sent again with its key, and the server, which may have run it already, answers
// with its first answer instead of running it twice (docs/protocol.md, "Delivery
// guarantees").

const STORAGE_KEY = "pi-server.outbox";
// Answers to what the agent asks (it waits for them): never held up behind a prompt.
const ANSWERS = new Set(["extension_ui_response", "native_tool_response", "approval.respond"]);

// 128 random bits as hex: crypto.randomUUID exists only in secure contexts, and a server
// on the LAN is often reached over plain http.
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function load() {
  try {
    const items = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
    return Array.isArray(items) ? items.filter((i) => i && typeof i.key === "string") : [];
  } catch {
    return [];
  }
}

export class Outbox {
  // onChange(items), onAnswered(item, result), onFailed(item, error).
  constructor({ onChange, onAnswered, onFailed }) {
    this.onChange = onChange;
    this.onAnswered = onAnswered;
    this.onFailed = onFailed;
    this.items = load();
    // Keys sent on the current connection whose answer has not come.
    this.inFlight = new Set();
  }

  save() {
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(this.items));
    } catch {
      // Storage full or refused: the items stay in this page's memory.
    }
    this.onChange(this.items);
  }

  add(method, params, sessionId, label) {
    const item = { key: newKey(), method, params, sessionId, label };
    this.items.push(item);
    this.save();
    return item;
  }

  remove(item) {
    this.items = this.items.filter((i) => i.key !== item.key);
    this.save();
  }

  // Sends what waits and is not on its way yet, while `rpc` is online. Prompts go one after
  // the other, each once the one before is answered (pi queues a prompt only once the run
  // before it has begun). Answers go at once: the prompt whose dialog they answer is
  // answered only after them. What a dropped connection leaves unanswered is sent again,
  // with its key, after the next hello.
  flush(rpc) {
    for (const item of this.items) {
      if (ANSWERS.has(item.method)) this.send(rpc, item);
    }
    const next = this.items.find((i) => !ANSWERS.has(i.method));
    if (next && !this.inFlight.has(next.key)) {
      this.send(rpc, next).then((answered) => answered && this.flush(rpc));
    }
  }

  // Fires with true once the server has answered `item`, false when the connection went.
  async send(rpc, item) {
    if (rpc.state !== "online" || this.inFlight.has(item.key)) return false;
    this.inFlight.add(item.key);
    const params = { ...item.params, idempotencyKey: item.key };
    try {
      const result = await rpc.call(item.method, params, item.sessionId);
      this.remove(item);
      this.onAnswered(item, result);
    } catch (error) {
      if (error.code === "disconnected" || error.code === "timeout") return false;
      this.remove(item);
      this.onFailed(item, error);
    } finally {
      this.inFlight.delete(item.key);
    }
    return true;
  }
}
