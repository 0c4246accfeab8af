"""
``python -m bench.gate``: what the permission gate adds to a tool call in ``full`` mode.

The server's real pi extension (``agents/extensions/session.ts``, loaded through jiti as pi
loads it) is given a stand-in of pi's extension API; its ``tool_call`` handler is then
called as pi calls it, many times, over a permission file that says ``full`` (written by
``agents/gate.write_mode_file``), against an empty handler as the baseline. Issue 23's
budget is 1 ms per call.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from piserver.agents.gate import PERMISSION_FILE_FLAG, write_mode_file
from piserver.agents.nativetools import EXTENSION_PATH
from tests.support.piagent import repository_root

CALLS = 20_000
BUDGET_MS = 1.0

HARNESS = """
const { createJiti } = require(process.env.JITI);
const jiti = createJiti(__filename);
const extension = jiti(process.env.EXTENSION).default;
const handlers = {};
const pi = {
  registerFlag() {}, registerTool() {}, getActiveTools: () => [], setActiveTools() {},
  getFlag: (name) => (name === process.env.FLAG ? process.env.PERMISSION_FILE : undefined),
  on: (event, handler) => { handlers[event] = handler; },
};
extension(pi);
const event = { toolName: "bash", toolCallId: "call_1", input: { command: "ls" } };
const ctx = { ui: { input: async () => { throw new Error("full mode asked the server"); } } };
async function time(handler, calls) {
  for (let i = 0; i < 1000; i++) await handler(event, ctx);
  const start = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) {
    if ((await handler(event, ctx)) !== undefined) throw new Error("blocked in full mode");
  }
  return Number(process.hrtime.bigint() - start) / calls / 1e6;
}
(async () => {
  const calls = Number(process.env.CALLS);
  const gate = await time(handlers.tool_call, calls);
  const empty = await time(async () => undefined, calls);
  console.log(JSON.stringify({ gateMs: gate, emptyMs: empty }));
})();
"""


def measure(calls: int = CALLS) -> dict:
    root = repository_root()
    modules = root / "node_modules"
    with tempfile.TemporaryDirectory() as work:
        permission_file = Path(work) / "permission.json"
        write_mode_file(permission_file, "full")
        harness = Path(work) / "harness.cjs"
        harness.write_text(HARNESS)
        env = {
            "JITI": str(modules / "jiti"),
            "EXTENSION": str(EXTENSION_PATH),
            "FLAG": PERMISSION_FILE_FLAG,
            "PERMISSION_FILE": str(permission_file),
            "CALLS": str(calls),
            "NODE_PATH": str(modules),
        }
        out = subprocess.run(
            [str(modules / ".bin" / "node"), str(harness)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    return json.loads(out.stdout)


def main() -> None:
    figures = measure()
    added = figures["gateMs"] - figures["emptyMs"]
    sys.stdout.write(
        f"permission gate, full mode: {figures['gateMs'] * 1000:.1f} µs per tool call "
        f"(an empty handler: {figures['emptyMs'] * 1000:.1f} µs; added "
        f"{added * 1000:.1f} µs; budget {BUDGET_MS * 1000:.0f} µs)\n"
    )
    if added > BUDGET_MS:
        sys.exit(1)


if __name__ == "__main__":
    main()
