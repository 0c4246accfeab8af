/**
 * pi-server's extension, loaded into every agent:
 *
 *     pi --mode rpc -e <this file> --system-prompt-file=<path> [--native-tools-file=<path>]
 *
 * It supplies what a client chooses for its session at run time rather than on pi's command
 * line, so that an agent started ahead of any session (a warm agent) can serve whichever
 * session comes:
 *
 * - The session's system prompt: when `<system-prompt-file>` exists, its text replaces pi's
 *   own preamble (as pi's `--system-prompt` would) at every `before_agent_start`, i.e. before
 *   each run. The server writes the file (atomically) when the session is created.
 * - Native tools: tools that only a connected client device can run (location, photos,
 *   reminders...), offered to the model like any other tool; below.
 *
 * Wire contract with pi-server (mirrored in piserver/agents/nativetools.py; change both together):
 *
 * 1. Declarations. `<path>` holds a JSON array `[{"name", "description", "parameters"}]`,
 *    `parameters` a JSON Schema object, names already validated by the server (never one of
 *    pi's built-in tools). The server replaces the file atomically whenever the set changes.
 *    This extension reads it at `session_start` and again at every `before_agent_start`, i.e.
 *    before each run: tools in the file are registered (or updated) and active, native tools
 *    no longer in it are deactivated; pi's other tools keep their state. A missing file means
 *    no native tools; an unreadable one fails the read with an `extension_error` and leaves
 *    the previous set in place.
 *
 * 2. A call. When the model calls a native tool, the extension asks over pi's extension UI
 *    channel with an `input` dialog, written by pi to stdout as
 *
 *        {"type": "extension_ui_request", "id": "<uuid>", "method": "input",
 *         "title": "pi-server:native-tool",
 *         "placeholder": "{\"toolCallId\": \"<pi tool call id>\", \"toolName\": \"get_location\",
 *                          \"args\": {...}}"}
 *
 *    The title marks it as a native tool call (not a dialog for a person); the placeholder is
 *    a JSON string. No `timeout` is set: the server owns the timeout.
 *
 * 3. The answer, written by the server to pi's stdin:
 *
 *        {"type": "extension_ui_response", "id": "<uuid>", "value": "{\"result\": <any JSON>}"}
 *        {"type": "extension_ui_response", "id": "<uuid>", "value": "{\"error\": \"<message>\"}"}
 *        {"type": "extension_ui_response", "id": "<uuid>", "cancelled": true}
 *
 *    `value` is a JSON string. A result becomes the tool's text content (a string as is,
 *    anything else as JSON); an error or a cancellation makes the tool fail with a message the
 *    model reads (`isError: true`). A `value` that is not such an object fails the tool too.
 *
 * 4. Abort. When the run is aborted while a call waits, pi drops the dialog without writing
 *    anything; the tool fails ("... was aborted") and pi emits the usual
 *    `tool_execution_end {"toolCallId": "<pi tool call id>", "isError": true}` before
 *    `agent_end`. That event, for a call the server still holds as pending, is how the server
 *    learns the call was cancelled. A late answer to a dropped dialog is ignored by pi.
 *
 * The permission gate (mirrored in piserver/agents/gate.py; change both together):
 *
 * 5. `--permission-file=<path>` names a JSON object `{"mode": "full" | ...}` the server
 *    replaces atomically; the agent can read it but not write it (a sandbox mounts it
 *    read-only). It is read at every `tool_call`. In `full` mode every call runs at once;
 *    for any other mode, or a missing or unreadable file, the call is put to the server,
 *    which decides (the rules, what was allowed for the session, a person). Without the
 *    flag (pi run by something else than pi-server) there is no gate.
 *
 *        {"type": "extension_ui_request", "id": "<uuid>", "method": "input",
 *         "title": "pi-server:approval",
 *         "placeholder": "{\"toolCallId\": ..., \"toolName\": \"bash\", \"input\": {...}}"}
 *
 *    answered with `value` `{"allow": true}` or `{"block": "<reason the model reads>"}`.
 *    Anything else, a cancellation, or an aborted run blocks the call (fail closed).
 */

import { existsSync, readFileSync } from "node:fs";
import type { ExtensionAPI } from "@earendil-works/pi-coding-agent";

const TOOLS_FILE_FLAG = "native-tools-file";
const SYSTEM_PROMPT_FLAG = "system-prompt-file";
const CALL_TITLE = "pi-server:native-tool";
const PERMISSION_FILE_FLAG = "permission-file";
const GATE_TITLE = "pi-server:approval";

/** The session's mode as the server last wrote it; undefined when it cannot be read. */
function readMode(path: string): string | undefined {
	try {
		const mode = JSON.parse(readFileSync(path, "utf8"))?.mode;
		return typeof mode === "string" ? mode : undefined;
	} catch {
		return undefined;
	}
}

/** What the server decided for a gated call: undefined to run it, else the reason it is blocked. */
function readVerdict(answer: string | undefined): string | undefined {
	if (answer === undefined) return "pi-server did not answer the approval request";
	try {
		const verdict = JSON.parse(answer);
		if (verdict?.allow === true) return undefined;
		if (typeof verdict?.block === "string") return verdict.block;
	} catch {
		// Fall through: an unreadable answer blocks.
	}
	return "pi-server sent an unreadable approval answer";
}

interface NativeToolDeclaration {
	name: string;
	description: string;
	parameters: Record<string, unknown>;
}

function readDeclarations(path: string): NativeToolDeclaration[] {
	if (!existsSync(path)) return [];
	const declared = JSON.parse(readFileSync(path, "utf8"));
	if (!Array.isArray(declared)) {
		throw new Error(`${path}: expected a JSON array of native tools`);
	}
	return declared as NativeToolDeclaration[];
}

function resultText(result: unknown): string {
	return typeof result === "string" ? result : JSON.stringify(result ?? null);
}

/** The tool result for the server's answer, or an Error to throw (pi marks it isError). */
function readAnswer(toolName: string, answer: string): { text: string } | Error {
	let parsed: unknown;
	try {
		parsed = JSON.parse(answer);
	} catch {
		parsed = undefined;
	}
	if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
		const fields = parsed as { result?: unknown; error?: unknown };
		if (typeof fields.error === "string") return new Error(fields.error);
		if ("result" in fields) return { text: resultText(fields.result) };
	}
	return new Error(`pi-server sent an unreadable answer for ${toolName}`);
}

export default function piServerSession(pi: ExtensionAPI) {
	pi.registerFlag(TOOLS_FILE_FLAG, {
		description: "JSON file with the native tools a pi-server client offers",
		type: "string",
	});

	// Native tools registered so far, with the declaration each was registered from:
	// pi has no way to unregister a tool, so dropped ones are only deactivated.
	const registered = new Map<string, string>();

	function register(declaration: NativeToolDeclaration) {
		const { name, description, parameters } = declaration;
		pi.registerTool({
			name,
			label: name,
			description,
			parameters: parameters as never,
			async execute(toolCallId, args, signal, _onUpdate, ctx) {
				const answer = await ctx.ui.input(
					CALL_TITLE,
					JSON.stringify({ toolCallId, toolName: name, args }),
					{ signal },
				);
				if (answer === undefined) {
					throw new Error(signal?.aborted ? `${name} was aborted` : `${name} was cancelled`);
				}
				const outcome = readAnswer(name, answer);
				if (outcome instanceof Error) throw outcome;
				return { content: [{ type: "text", text: outcome.text }], details: {} };
			},
		});
	}

	function followDeclarations() {
		const path = pi.getFlag(TOOLS_FILE_FLAG);
		if (typeof path !== "string" || path === "") return;
		const declared = readDeclarations(path);
		for (const declaration of declared) {
			const serialised = JSON.stringify(declaration);
			if (registered.get(declaration.name) !== serialised) {
				register(declaration);
				registered.set(declaration.name, serialised);
			}
		}
		const wanted = new Set(declared.map((declaration) => declaration.name));
		const active = pi.getActiveTools().filter((name) => !registered.has(name));
		pi.setActiveTools([...active, ...wanted]);
	}

	pi.registerFlag(SYSTEM_PROMPT_FLAG, {
		description: "file with the system prompt of the pi-server session",
		type: "string",
	});

	function applySystemPrompt(options: { customPrompt?: string }) {
		const path = pi.getFlag(SYSTEM_PROMPT_FLAG);
		if (typeof path !== "string" || path === "" || !existsSync(path)) return;
		options.customPrompt = readFileSync(path, "utf8");
	}

	pi.registerFlag(PERMISSION_FILE_FLAG, {
		description: "JSON file with the pi-server session's permission mode",
		type: "string",
	});

	pi.on("tool_call", async (event, ctx) => {
		// full mode costs one small file read; every other mode is the server's decision.
		const path = pi.getFlag(PERMISSION_FILE_FLAG);
		if (typeof path !== "string" || path === "") return undefined;
		if (readMode(path) === "full") return undefined;
		const answer = await ctx.ui.input(
			GATE_TITLE,
			JSON.stringify({
				toolCallId: event.toolCallId,
				toolName: event.toolName,
				input: event.input,
			}),
			{ signal: ctx.signal },
		);
		const reason = readVerdict(answer);
		return reason === undefined ? undefined : { block: true, reason };
	});

	pi.on("session_start", () => followDeclarations());
	pi.on("before_agent_start", (event) => {
		followDeclarations();
		applySystemPrompt(event.systemPromptOptions);
	});
}
