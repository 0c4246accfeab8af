"""docs/performance.md, from one run's tables and figures."""

from piserver.agents.version import PI_PACKAGE

from . import report
from .rig import Machine, median

DELTA_GOAL = 100
RELAY_GOAL = 0.05
# Issue 13: against pi read directly, a 2,000-token answer unpaced (ratio) and paced
# (added), a short prompt's round trip (added seconds, p50), idle RSS (added bytes).
UNPACED_GOALS = {"delta": 1.1, "full": 1.5}
PACED_GOAL = 0.01
SHORT_GOAL = 0.003
IDLE_RSS_GOAL = 30e6
# Issue 13: session.create p50 with warm agents, and a new session's first token against a
# pi's own (seconds).
CREATE_GOAL = 0.015
FIRST_TOKEN_GOAL = 0.020


def start_goals(runs: dict) -> list[str]:
    """Issue 13's goals for a session's start (bench/lifecycle.py), with this run's figures."""

    def verdict(met: bool) -> str:
        return "met" if met else "not met"

    def p50(server, what):
        return median(r[what] for r in runs[server])

    lines = []
    for what, label in (
        ("create", "a bare one"),
        ("create with a system prompt", "the iOS app's, with a system prompt"),
    ):
        warm, cold = p50("warm", what), p50("cold", what)
        lines.append(
            f"`session.create` of a chat session, {label}, p50 ≤ {CREATE_GOAL * 1e3:g} ms "
            f"with warm agents: **{report.duration(warm)}** ({verdict(warm <= CREATE_GOAL)}); "
            f"{report.duration(cold)} with `--warm-agents 0`."
        )
    first = p50("warm", "create to first token")
    ahead = median(r["first run"] for r in runs["pi"])
    again = median(r["second run"] for r in runs["pi"])
    lines.append(
        "From a new session's create to its first streamed token: "
        f"**{report.duration(first)}** ({report.duration(p50('cold', 'create to first token'))} "
        f"cold). A pi started ahead takes {report.duration(ahead)} from its first prompt to "
        f"its first token ({(first - ahead) * 1e3:+.1f} ms; ≤ +{FIRST_TOKEN_GOAL * 1e3:g} ms: "
        f"{verdict(first - ahead <= FIRST_TOKEN_GOAL)}), and {report.duration(again)} in its "
        f"second run ({(first - again) * 1e3:+.1f} ms: "
        f"{verdict(first - again <= FIRST_TOKEN_GOAL)}): a pi's first run loads its provider "
        "and HTTP client, which a warm agent cannot do ahead without calling the model."
    )
    return lines


def goals(real_pi: dict) -> list[str]:
    """One line per goal of the issue, with this run's figure."""
    lines = []
    for label, figures in zip(("streamed without delay", "paced"), real_pi["wire"], strict=True):
        full = figures["full"]["payload"]
        delta = figures["delta"]["payload"]
        deflated = figures["delta + deflate"]["socket"]
        verdict = "met" if full >= DELTA_GOAL * delta else "not met"
        lines.append(
            f"Delta mode ≥ {DELTA_GOAL}x fewer bytes than full mode ({label}): "
            f"**{full / delta:.0f}x** ({report.size(delta)} against {report.size(full)}; "
            f"{full / deflated:.0f}x with permessage-deflate): {verdict}."
        )
    for pace, runs in real_pi["times"].items():
        base = median(took for took, _ in runs["direct"])
        for mode in ("full", "delta"):
            added = median(took for took, _ in runs[mode]) / base - 1
            verdict = "met" if added <= RELAY_GOAL else "not met"
            answer = "streamed without delay" if pace == "fast" else "paced"
            lines.append(
                f"The relay adds ≤ {RELAY_GOAL:.0%} to a real 2,000-token answer end to end "
                f"({answer}), {mode}-mode client: **{report.percent(added)}**: {verdict}."
            )
    return lines


def hot_path_goals(real_pi: dict, idled: dict) -> list[str]:
    """One line per goal of issue 13 measured here, with this run's figure."""

    def verdict(met: bool) -> str:
        return "met" if met else "not met"

    def typical(runs, name):
        return median(took for took, _ in runs[name])

    lines = []
    fast, paced = real_pi["times"]["fast"], real_pi["times"]["paced"]
    for mode, goal in UNPACED_GOALS.items():
        ratio = typical(fast, mode) / typical(fast, "direct")
        lines.append(
            f"A 2,000-token answer end to end, unpaced, {mode} mode ≤ {goal:g}x pi read "
            f"directly: **{report.ratio(ratio)}**: {verdict(ratio <= goal)}."
        )
    for mode in ("full", "delta"):
        added = typical(paced, mode) / typical(paced, "direct") - 1
        lines.append(
            f"The same answer paced, {mode} mode ≤ +{PACED_GOAL:.0%}: "
            f"**{report.percent(added)}**: {verdict(added <= PACED_GOAL)}."
        )
    short = real_pi["short"]
    for mode in ("full", "delta"):
        added = typical(short, mode) - typical(short, "direct")
        lines.append(
            f"A short prompt's round trip, {mode} mode ≤ pi direct + {SHORT_GOAL * 1e3:g} ms "
            f"(p50 of {len(short[mode])}): **{added * 1e3:+.2f} ms** "
            f"({report.duration(typical(short, mode))} against "
            f"{report.duration(typical(short, 'direct'))}): {verdict(added <= SHORT_GOAL)}."
        )
    left = idled["idle"][1]
    added = idled["idle"][0] - idled["fresh_rss"]
    lines.append(
        f"{idled['sessions']} sessions created, prompted once and left idle past the timeout: "
        f"**{left} pi processes** left ({verdict(left == 0)}); server RSS "
        f"**{report.size(idled['idle'][0])}** against {report.size(idled['fresh_rss'])} "
        f"for the fresh server ({added / 1e6:+.1f} MB; within {IDLE_RSS_GOAL / 1e6:.0f} MB: "
        f"{verdict(added <= IDLE_RSS_GOAL)}); {idled['kept']} of {idled['resumed_count']} "
        "resumed with their history on the next prompt "
        f"({verdict(idled['kept'] == idled['resumed_count'])})."
    )
    return lines


def event_modes(real_pi: dict) -> list[str]:
    """What each event mode sends for pi 1.x's answers in this run, and why."""
    events, pi_bytes = real_pi["pi_events"][0], real_pi["pi_bytes"][0]
    updates, update_bytes = real_pi["updates"][0], real_pi["update_bytes"][0]
    usage = real_pi["usage_bytes"][0]
    fast, paced = real_pi["wire"]
    full, delta = fast["full"], fast["delta"]
    envelope = (full["payload"] - pi_bytes) / full["frames"]
    others = pi_bytes - update_bytes
    share = "most" if others > delta["payload"] / 2 else "less than half"
    return [
        f"pi writes a 2,000-token answer as {events:,} events, "
        f"{report.size(pi_bytes)}: {updates:,} delta-only `message_update`s (one per token, "
        f"{report.size(update_bytes)}) and the rest, the messages at their start and end, "
        f"`turn_end` and `agent_end` ({report.size(others)}). Every update "
        f"repeats the usage so far: {report.size(usage)}, "
        f"{report.percent(usage / pi_bytes).lstrip('+')} of pi's bytes.",
        f"Full mode sends pi's events unchanged, each in the server's envelope (`v`, `kind`, "
        f"`sessionId`, `seq`, `type`, `payload`): {report.size(full['payload'])} in "
        f"{full['frames']:,} frames, {report.ratio(full['payload'] / pi_bytes)} the bytes of "
        "pi's stdout. "
        f"The envelope adds about {envelope:.0f} bytes to each event, against "
        f"{pi_bytes / events:.0f} bytes for pi's average event.",
        f"Delta mode drops that usage from every update and merges the text deltas of each "
        f"30 ms window: streamed without delay, {delta['frames']:,} frames, "
        f"{report.size(delta['payload'])}, {report.ratio(full['payload'] / delta['payload'])} "
        f"fewer bytes than full mode ({report.ratio(pi_bytes / delta['payload'])} fewer than "
        f"pi's stdout). The {events - updates} events that are not updates go unchanged, "
        f"{report.size(others)} of pi's bytes, {share} of what delta mode sends: they carry "
        "whole messages (the answer in `message_end`, `turn_end` and `agent_end`, the system "
        "prompt in its own `message_start`/`message_end` and in `agent_end`). Paced at "
        f"{real_pi['paced_rate']:.0f} tokens a second a window holds only a few tokens: "
        f"{paced['delta']['frames']:,} frames, {report.size(paced['delta']['payload'])}, "
        f"{report.ratio(paced['full']['payload'] / paced['delta']['payload'])} fewer than "
        "full mode.",
        f"permessage-deflate alone brings full mode to "
        f"{report.size(fast['full + deflate']['socket'])} on the "
        f"socket ({report.ratio(full['payload'] / fast['full + deflate']['socket'])} fewer), "
        f"delta mode with it to {report.size(fast['delta + deflate']['socket'])} "
        f"({report.ratio(full['payload'] / fast['delta + deflate']['socket'])} fewer than "
        "full mode uncompressed).",
    ]


def markdown(
    machine: Machine,
    command: str,
    took: float,
    load_at_end: str,
    tables,
    goal_lines,
    mode_lines,
    findings,
    hot_path_lines,
    warm_lines=(),
) -> str:
    parts = [
        "# Performance",
        "",
        "Measured by the benchmarks in `bench/` (issue 5), on pi 1.6 since issue 10: bytes on",
        "the wire per event mode, what the relay costs in time, and what a resume costs; since",
        "issue 13 also a short prompt's round trip and what idle sessions cost. Every figure",
        "is a ratio against a baseline measured in the same run, on the same machine.",
        "This file is written by the benchmark run; the figures below are from the machine",
        f"described here, on {machine.date}. Another machine gives other absolute times; the",
        "ratios are what to compare.",
        "",
        "## Machine",
        "",
        f"- {machine.cores} cores ({machine.cpu}), {machine.system}; load average "
        f"{machine.load} (1, 5, 15 min) when the run began, {load_at_end} when it ended",
        "  (the cores are shared: other work running at the same time slows every route,",
        "  and the busier the machine the more the relay's own CPU time shows in its times)",
        f"- {machine.python}",
        f"- pi {machine.pi_version} (`{PI_PACKAGE}`, on the Node.js that",
        "  `scripts/install-pi` installs), the scripted LLM of `tests/support/fakellm.py` on",
        "  loopback",
        "",
        "## Reproduce",
        "",
        "```sh",
        "tox -e bench",
        f"# or, in a development environment: {command}",
        "```",
        "",
        "`python -m bench --help` lists the sizes (events, clients, rounds) it can be run with;",
        f"the figures here are from the command above. This run took {took / 60:.1f} minutes.",
        "",
        f"## Event modes on pi {machine.pi_version}",
        "",
        *[f"- {line}" for line in mode_lines],
        "",
        "## Goals of issue 5",
        "",
        "Issue 5 set these goals on pi 0.73, whose every `message_update` carried the whole",
        "message so far twice (its figure: 30.3 MB of events for a 2,000-token answer, 0.29 MB",
        "without those two fields). pi 1.x no longer sends them, so there is far less for delta",
        f"mode to drop; the goals stay as they were, measured on {machine.pi_version}:",
        "",
        *[f"- {line}" for line in goal_lines],
        "",
        "## Goals of issue 13: session start, the hot path and idle sessions",
        "",
        "Ratios and differences against pi read directly in the same run (see the tables",
        "below); the start figures from the session-start table, the idle figures from the",
        "idle-sessions table:",
        "",
        *[f"- {line}" for line in hot_path_lines],
        "",
    ]
    if warm_lines:
        parts += [
            "## Goal of issue 21: warm creates while the data dir changes",
            "",
            "From the warm-creates table (`bench/warmcreate.py`):",
            "",
            *[f"- {line}" for line in warm_lines],
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
        "  process, from the prompt written to the last event read (`agent_settled`, with",
        "  which pi 1.x ends a run, for a real answer); CPU times come from `/proc`.",
        "- **Bytes.** One session answers while four clients are attached (full, delta, delta",
        "  with permessage-deflate, full with permessage-deflate). Payload bytes are the",
        "  WebSocket messages' uncompressed sizes; socket bytes are what the client read from",
        "  TCP (frame headers, compression). pi's stdout is read directly from a pi started",
        "  with the same scripted answer. Each client checks that it got the whole text.",
        "- **Relay cost.** `bench/stubpi.py` is a fake `pi --mode rpc` that answers a prompt",
        "  with N events of a recorded real pi 1.6 stream in one write. The baseline reads its",
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
        "- **Short prompt.** The same warm pi processes and clients answer a 5-token answer,",
        "  prompt to `agent_settled`, the routes taking turns: p50 and p90 of the rounds.",
        "- **Idle sessions.** A pi-server of its own with `--agent-idle-timeout 2` (and room",
        "  for every agent under `--max-agents`): a client per chat session creates it and",
        "  prompts it once; then they all leave. The server's descendants in `/proc` are polled",
        "  until none is left (with a deadline); its `VmRSS` is read when it has just",
        "  started, with every session answered, once idle, and after resuming some",
        "  sessions (attach and prompt again; `get_messages` must hold both turns).",
        "- **Session start.** Two pi-servers of their own, one with `--warm-agents 1` (the",
        "  default) and one with `--warm-agents 0`, both unsandboxed like pi read directly,",
        "  taking turns: a bare `session.create`, then the iOS app's (with a system prompt)",
        "  and a prompt right after it, timed to its first `message_update`. Before each",
        '  create the warm server\'s pool is let fill again (`pi_server_agents{state="spare"}`',
        "  of `/metrics`). The baseline is a new pi per round, prompted 0.5 s after it answered",
        "  its start-up `get_state`: its first prompt and its second.",
        "- **Warm creates while the data dir changes.** A pi-server of its own with",
        "  `--warm-agents 1`, unsandboxed, and another process appending an access-log line",
        "  to a file in its data dir every 2 ms; rounds alternate between that writer running",
        "  and stopped (`SIGSTOP`), each letting the pool fill first and timing a bare",
        "  `session.create` (then deleting the session). Then pi's `settings.json` is changed",
        "  while the pool's agent waits: the next create starts a cold pi, and the pool must",
        "  fill again by itself for the creates after it to be warm.",
        "- **Profile.** Not part of this run: `python -m bench.hotpath` runs pi-server under",
        "  cProfile through the same answers and short prompts and lists where its time goes.",
        "- **Resume.** The events are pi's own lines for a 2,000-token answer, repeated to",
        "  the number of events in the resume table: `Journal.append` them (the baseline),",
        "  read them back with `Journal.replay` in both modes, and resume a client over a",
        "  socket (`hello` with `resume`) from before the first of them, and in full mode also",
        "  from before the last events the server replays in full mode.",
        "",
    ]
    return "\n".join(parts)
