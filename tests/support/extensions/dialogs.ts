/**
 * Test-only pi extension: extension dialogs on demand, so that tests can drive pi's
 * extension UI protocol (an `extension_ui_request` on stdout, the answer on stdin).
 *
 * - Command `/dialog <select|confirm|input|editor> [timeoutMs]` opens that dialog, then
 *   reports what the extension received as a notice:
 *   `notify` with message `dialog <method> answered <JSON of the answer>` ("null" for undefined).
 * - Tool `confirm_action {question}` asks `confirm` during a run and returns
 *   "confirmed" or "declined" as its result.
 */

import type { ExtensionAPI } from "@earendil-works/pi-coding-agent";

export default function dialogs(pi: ExtensionAPI) {
	pi.registerCommand("dialog", {
		description: "Open an extension dialog and report the answer",
		handler: async (args, ctx) => {
			const [method, timeoutText] = args.trim().split(/\s+/);
			const options = timeoutText ? { timeout: Number(timeoutText) } : undefined;
			let answer: unknown;
			if (method === "select") {
				answer = await ctx.ui.select("Pick a colour", ["red", "green"], options);
			} else if (method === "confirm") {
				answer = await ctx.ui.confirm("Proceed?", "The test asks.", options);
			} else if (method === "input") {
				answer = await ctx.ui.input("Your name", "type it", options);
			} else if (method === "editor") {
				answer = await ctx.ui.editor("Edit the text", "line 1\nline 2");
			} else {
				ctx.ui.notify(`unknown dialog ${method}`, "error");
				return;
			}
			ctx.ui.notify(`dialog ${method} answered ${JSON.stringify(answer ?? null)}`, "info");
		},
	});

	pi.registerTool({
		name: "confirm_action",
		label: "confirm_action",
		description: "Ask the user to confirm an action",
		parameters: {
			type: "object",
			properties: { question: { type: "string" } },
			required: ["question"],
		} as never,
		async execute(_toolCallId, params, signal, _onUpdate, ctx) {
			const question = (params as { question: string }).question;
			const confirmed = await ctx.ui.confirm("Confirm", question, { signal });
			return { content: [{ type: "text", text: confirmed ? "confirmed" : "declined" }], details: {} };
		},
	});
}
