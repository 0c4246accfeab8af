"""docs/performance.md, from one run's tables and figures."""

from . import report
from .rig import Machine, median

DELTA_GOAL = 100
RELAY_GOAL = 0.05


def goals(real_pi: dict) -> list[str]:
    """One line per goal of the issue, with this run's figure."""
    lines = []
    for label, figures in zip(("streamed without delay", "paced"), real_pi["wire"],
                              strict=True):
        full = figures["full"]["payload"]
        delta = figures["delta"]["payload"]
        deflated = figures["delta + deflate"]["socket"]
        verdict = "met" if full >= DELTA_GOAL * delta else "not met"
        lines.append(
            f"Delta mode ≥ {DELTA_GOAL}x fewer bytes than full mode ({label}): "
            f"**{full / delta:.0f}x** ({report.size(delta)} against {report.size(full)}; "
            f"{full / deflated:.0f}x with permessage-deflate): {verdict}.")
    for pace, runs in real_pi["times"].items():
        base = median(took for took, _ in runs["direct"])
        for mode in ("full", "delta"):
            added = median(took for took, _ in runs[mode]) / base - 1
            verdict = "met" if added <= RELAY_GOAL else "not met"
            answer = "streamed without delay" if pace == "fast" else "paced"
            lines.append(
                f"The relay adds ≤ {RELAY_GOAL:.0%} to a real 2,000-token answer end to end "
                f"({answer}), {mode}-mode client: **{report.percent(added)}**: {verdict}.")
    return lines


def markdown(machine: Machine, command: str, tables, goal_lines, findings) -> str:
    parts = [
        "# Performance",
        "",
        "Measured by the benchmarks in `bench/` (issue 5): bytes on the wire per event mode,",
        "what the relay costs in time, and what a resume costs. Every figure is a ratio",
        "against a baseline measured in the same run, on the same machine. This file is",
        "written by the benchmark run; the figures below are from the machine described",
        f"here, on {machine.date}. Another machine gives other absolute times; the ratios",
        "are what to compare.",
        "",
        "## Machine",
        "",
        f"- {machine.cores} cores ({machine.cpu}), {machine.system}; load average "
        f"{machine.load} (1, 5, 15 min) when the run began",
        f"- {machine.python}",
        f"- pi {machine.pi_version} (`@mariozechner/pi-coding-agent`), the scripted LLM of",
        "  `tests/support/fakellm.py` on loopback",
        "",
        "## Reproduce",
        "",
        "```sh",
        "tox -e bench",
        f"# or, in a development environment: {command}",
        "```",
        "",
        "`python -m bench --help` lists the sizes (events, clients, rounds) it can be run with;",
        "the figures here are from the defaults. The whole run takes a few minutes on 2 cores.",
        "",
        "## Goals of issue 5",
        "",
        *[f"- {line}" for line in goal_lines],
        "",
    ]
    if findings:
        parts += ["## Findings", "", *[f"- {line}" for line in findings], ""]
    parts += ["## Results", ""]
    for table in tables:
        parts += [table.markdown(), ""]
    parts += [
        "## How it is measured",
        "",
        "- **Processes.** pi-server runs in a process of its own (`bench/serve.py`, the real",
        "  service tree on loopback), and so does the scripted LLM (`bench/llm.py`), whose",
        "  pacing timers must not run late because a client is busy. The WebSocket clients and",
        "  the direct readers used as baselines run in the bench process, so the relay is",
        "  never charged with their work. Times are `time.perf_counter()` in the bench",
        "  process, from the prompt written to the last event read; CPU times come from",
        "  `/proc`.",
        "- **Bytes.** One session answers while four clients are attached (full, delta, delta",
        "  with permessage-deflate, full with permessage-deflate). Payload bytes are the",
        "  WebSocket messages' uncompressed sizes; socket bytes are what the client read from",
        "  TCP (frame headers, compression). pi's stdout is read directly from a pi started",
        "  with the same scripted answer. Each client checks that it got the whole text.",
        "- **Relay cost.** `bench/stubpi.py` is a fake `pi --mode rpc` that answers a prompt",
        "  with N events of a recorded real pi stream in one write. The baseline reads its",
        "  stdout and splits lines; the relayed runs time the same stub behind pi-server until",
        "  every attached client has the N-th event. The clients (`bench/wsclient.py`) split",
        "  frames and read only each event's `seq`, so a hundred of them cost the bench",
        "  process far less than the server they measure.",
        "- **Relay time end to end.** pi answers 2,000 tokens from the scripted LLM, read",
        "  directly by a JSON-lines reader that decodes every line (the baseline), and through",
        "  pi-server by one WebSocket client that decodes every event it gets; each route has",
        "  its own pi. Routes take turns round by round, after warm-up rounds (pi's first",
        "  answers are much slower). Once with the answer streamed without delay, where the",
        "  relay's throughput decides, once paced, where its latency does.",
        "- **Resume.** The events are pi's own lines for a 2,000-token answer, repeated to",
        "  10,000: `Journal.append` them (the baseline), read them back with `Journal.replay`",
        "  in both modes, and resume a client over a socket (`hello` with `resume`) from",
        "  before the first of them.",
        "",
    ]
    return "\n".join(parts)
