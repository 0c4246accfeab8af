// One session's conversation on the page, built from its events: finished messages as pi
// sends them in message_end, the one being streamed from its delta-mode message_update
// events, tool runs from tool_execution_*. Everything shown is untrusted: text goes in as
// textContent, Markdown through the sanitizer.

import { renderMarkdown } from "./markdown.js";

const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

function textOf(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((block) => block && block.type === "text")
    .map((block) => block.text)
    .join("\n");
}

function toolOutput(result) {
  if (result === undefined || result === null) return "";
  if (typeof result === "string") return result;
  if (Array.isArray(result.content)) return textOf(result.content);
  return JSON.stringify(result, null, 2);
}

function shortArgs(args) {
  if (!args || typeof args !== "object") return "";
  const text = Object.values(args)
    .map((value) => (typeof value === "string" ? value : JSON.stringify(value)))
    .join(" ");
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

// A tool call: name, arguments and output, collapsed by default.
class ToolView {
  constructor() {
    this.root = el("details", "tool");
    const summary = el("summary");
    this.name = el("span", "tool-name");
    this.args = el("span", "tool-args");
    this.status = el("span", "tool-status");
    summary.append(this.name, this.args, this.status);
    this.argsFull = el("pre", "tool-input");
    this.output = el("pre", "tool-output");
    this.root.append(summary, this.argsFull, this.output);
  }

  update({ name, args, output, state }) {
    if (name !== undefined) this.name.textContent = name;
    if (args !== undefined) {
      this.args.textContent = shortArgs(args);
      this.argsFull.textContent = JSON.stringify(args, null, 2);
    }
    if (output !== undefined) this.output.textContent = output;
    if (state !== undefined) {
      this.root.dataset.state = state;
      this.status.textContent = { running: "running…", done: "done", error: "failed" }[state];
    }
  }
}

// An assistant message: its content blocks in order, updated in place while it streams.
class AssistantView {
  constructor(conversation) {
    this.conversation = conversation;
    this.root = el("article", "message assistant");
    this.blocks = [];
  }

  update(content) {
    content.forEach((block, index) => {
      if (!block) return;
      let view = this.blocks[index];
      if (!view || view.type !== block.type) {
        const next = this.makeBlock(block);
        if (view) view.node.replaceWith(next.node);
        else this.root.append(next.node);
        view = this.blocks[index] = next;
      }
      if (block.type === "text" && view.shown !== block.text) {
        renderMarkdown(view.node, block.text);
        view.shown = block.text;
      } else if (block.type === "thinking" && view.shown !== block.thinking) {
        view.body.textContent = block.thinking;
        view.shown = block.thinking;
      } else if (block.type === "toolCall") {
        if (block.id && view.id !== block.id) {
          view.id = block.id;
          this.conversation.toolViews.set(block.id, view.tool);
          this.conversation.refreshTool(block.id);
        }
        view.tool.update({ name: block.name || "tool", args: block.arguments });
      }
    });
  }

  makeBlock(block) {
    if (block.type === "text") return { type: "text", node: el("div", "markdown") };
    if (block.type === "thinking") {
      const node = el("details", "thinking");
      node.append(el("summary", "", "Thinking"));
      const body = el("pre", "thinking-text");
      node.append(body);
      return { type: "thinking", node, body };
    }
    if (block.type === "toolCall") {
      const tool = new ToolView();
      return { type: "toolCall", node: tool.root, tool };
    }
    return { type: block.type, node: el("span", "unknown-block") };
  }
}

export class Conversation {
  constructor(container, { onRunning, onChange }) {
    this.container = container;
    this.onRunning = onRunning;
    this.onChange = onChange;
    this.reset();
  }

  // Whether any message is shown (events replayed or live, or a snapshot).
  get empty() {
    return !this.container.querySelector(".message") && !this.streaming;
  }

  reset() {
    this.container.replaceChildren();
    this.streaming = null;
    this.streamingView = null;
    this.toolRuns = new Map();
    this.toolViews = new Map();
    this.running = false;
    this.frame = 0;
    this.onRunning(false);
  }

  setRunning(running) {
    if (this.running === running) return;
    this.running = running;
    this.onRunning(running);
  }

  // Applies one event of the session.
  apply(type, payload) {
    switch (type) {
      case "agent_start":
        this.setRunning(true);
        break;
      case "agent_end":
        // One low-level run is over; pi may still retry, compact or take a queued message.
        this.finishStreaming(null);
        // The server's own agent_end when the agent died mid-run carries why.
        if (payload.error && payload.error.message) this.notice(payload.error.message);
        break;
      case "agent_settled":
        this.finishStreaming(null);
        this.setRunning(false);
        break;
      case "agent_exit":
        this.finishStreaming(null);
        this.setRunning(false);
        this.notice("The agent stopped unexpectedly; it restarts with the next prompt.");
        break;
      case "message_start":
        if (payload.message && payload.message.role === "assistant") {
          this.streaming = { ...payload.message, content: [...(payload.message.content || [])] };
          this.scheduleStreamRender();
        }
        break;
      case "message_update":
        this.applyDelta(payload.assistantMessageEvent || {});
        break;
      case "message_end":
        this.addMessage(payload.message);
        break;
      case "tool_execution_start":
        this.setToolRun(payload.toolCallId, {
          name: payload.toolName, args: payload.args, state: "running", output: "",
        });
        break;
      case "tool_execution_update":
        this.setToolRun(payload.toolCallId, { output: toolOutput(payload.partialResult) });
        break;
      case "tool_execution_end":
        this.setToolRun(payload.toolCallId, {
          output: toolOutput(payload.result), state: payload.isError ? "error" : "done",
        });
        break;
      case "event_too_large":
        // The server could not send an event over its frame limit: say what is missing.
        this.notice(
          `A ${payload.eventType} event (${payload.size} bytes) was larger than this ` +
            `server's frame limit (${payload.limit} bytes) and is not shown.`,
        );
        break;
      case "session_snapshot":
        this.reset();
        for (const message of payload.messages || []) this.addMessage(message);
        if (payload.streamingMessage) {
          this.streaming = payload.streamingMessage;
          this.scheduleStreamRender();
        }
        this.setRunning(Boolean(payload.state && payload.state.isStreaming));
        break;
      default:
        return;
    }
    this.onChange();
  }

  applyDelta(event) {
    if (!this.streaming) this.streaming = { role: "assistant", content: [] };
    const content = this.streaming.content;
    const index = event.contentIndex;
    switch (event.type) {
      case "text_start":
        content[index] = { type: "text", text: "" };
        break;
      case "text_delta":
        if (!content[index]) content[index] = { type: "text", text: "" };
        content[index].text += event.delta;
        break;
      case "text_end":
        if (typeof event.content === "string") content[index] = { type: "text", text: event.content };
        break;
      case "thinking_start":
        content[index] = { type: "thinking", thinking: "" };
        break;
      case "thinking_delta":
        if (!content[index]) content[index] = { type: "thinking", thinking: "" };
        content[index].thinking += event.delta;
        break;
      case "toolcall_start":
        content[index] = { type: "toolCall", id: event.id, name: event.toolName, arguments: {} };
        break;
      case "toolcall_end":
        if (event.toolCall) content[index] = event.toolCall;
        break;
      default:
        return;
    }
    this.scheduleStreamRender();
  }

  scheduleStreamRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.renderStreaming();
    });
  }

  renderStreaming() {
    if (!this.streaming) return;
    if (!this.streamingView) {
      this.streamingView = new AssistantView(this);
      this.streamingView.root.dataset.streaming = "true";
      this.container.append(this.streamingView.root);
    }
    this.streamingView.update(this.streaming.content || []);
    this.onChange();
  }

  // The streamed message is over: `message`, when given, is its final form.
  finishStreaming(message) {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
    }
    const view = this.streamingView;
    this.streaming = null;
    this.streamingView = null;
    if (!view) return null;
    delete view.root.dataset.streaming;
    if (message) view.update(message.content || []);
    return view;
  }

  addMessage(message) {
    if (!message) return;
    if (message.role === "assistant") {
      let view = this.finishStreaming(message);
      if (!view) {
        view = new AssistantView(this);
        this.container.append(view.root);
        view.update(message.content || []);
      }
      if (message.stopReason === "aborted") view.root.append(el("p", "aborted", "Stopped."));
      if (message.stopReason === "error" && message.errorMessage) {
        view.root.append(el("p", "error", message.errorMessage));
      }
    } else if (message.role === "user") {
      const node = el("article", "message user");
      node.append(el("div", "user-text", textOf(message.content)));
      this.container.append(node);
    } else if (message.role === "toolResult") {
      this.setToolRun(message.toolCallId, {
        name: message.toolName, output: textOf(message.content),
        state: message.isError ? "error" : "done",
      });
    }
  }

  setToolRun(id, update) {
    if (!id) return;
    this.toolRuns.set(id, { ...(this.toolRuns.get(id) || {}), ...update });
    this.refreshTool(id);
  }

  refreshTool(id) {
    const view = this.toolViews.get(id);
    const run = this.toolRuns.get(id);
    if (view && run) view.update(run);
  }

  notice(text) {
    this.container.append(el("p", "notice", text));
  }
}
