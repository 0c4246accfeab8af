"""The launchers' command lines and checks: bubblewrap's options for one agent, the
command template's placeholders, and the supervisor starting agents through one."""

import os
import stat

import pytest
from twisted.internet.protocol import ProcessProtocol

from piserver.agents.launchers import AgentLaunch, LocalLauncher, SessionFiles
from piserver.agents.launchers.bwrap import (
    BwrapLauncher,
    BwrapUnusable,
    check_bwrap,
    git_binds,
    install_paths,
    session_args,
)
from piserver.agents.launchers.caches import fill, session_jiti
from piserver.agents.launchers.template import BadTemplate, CommandTemplateLauncher, parse_template
from piserver.agents.supervisor import AgentSupervisor
from tests.support.fakeprocess import FakeProcessReactor


def launch(cwd="/data/sessions/s1/workspace", files=None, env=None):
    return AgentLaunch(
        key="s1",
        executable="/opt/node",
        argv=("node", "/opt/pi.js", "--mode", "rpc"),
        cwd=cwd,
        env=env or {"HOME": "/home/me", "PATH": "/usr/bin"},
        files=files,
    )


def pairs(args, flag):
    """The (source, destination) pairs of every ``flag`` in a bwrap command line."""
    return [(args[i + 1], args[i + 2]) for i, word in enumerate(args) if word == flag]


def executable(path, text="#!/bin/sh\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_install_paths_are_the_node_modules_pi_lives_in_or_the_command_s_directory(tmp_path):
    project = tmp_path / "project" / "node_modules"
    cli = executable(project / "@scope" / "pi" / "dist" / "cli.js")
    (project / ".bin").mkdir()
    os.symlink(cli, project / ".bin" / "pi")
    script = executable(tmp_path / "tools" / "agent")
    command = [str(project / ".bin" / "pi"), str(script), "--flag", "relative/word"]
    assert install_paths(command) == (str(project), str(script.parent))


def test_a_session_sees_its_directory_read_only_and_its_own_dirs_read_write(tmp_path):
    session = tmp_path / "sessions" / "s1"
    for name in ("workspace", "pi", "agent"):
        (session / name).mkdir(parents=True)
    auth = tmp_path / "auth.json"
    auth.write_text("{}")
    files = SessionFiles(
        directory=str(session),
        writable=(str(session / "workspace"), str(session / "pi"), str(session / "agent")),
        readable=(str(auth), str(tmp_path / "gone.json")),
    )
    args = session_args(str(session / "workspace"), files, ["/opt/pi"])
    ro, rw = pairs(args, "--ro-bind"), pairs(args, "--bind")
    assert (str(session), str(session)) in ro and (str(auth), str(auth)) in ro
    assert rw == [(str(session / n), str(session / n)) for n in ("workspace", "pi", "agent")]
    # The read-only session dir comes first: its read-write children are mounted over it.
    assert args.index(str(session)) < args.index(str(session / "workspace"))
    assert str(tmp_path / "gone.json") not in args  # missing: nothing to show
    assert str(tmp_path) not in args  # never the data dir itself
    assert args[-2:] == ["--chdir", str(session / "workspace")]


def make_worktree(tmp_path):
    source = tmp_path / "source"
    common = source / ".git"
    for part in (
        "objects",
        "refs/heads/pi",
        "logs/refs/heads/pi",
        "worktrees/repo1",
        "worktrees/repo2",
        "hooks",
    ):
        (common / part).mkdir(parents=True)
    checkout = tmp_path / "sessions" / "s1" / "repo"
    checkout.mkdir(parents=True)
    (checkout / ".git").write_text(f"gitdir: {common / 'worktrees' / 'repo1'}\n")
    for name, owner in (("repo1", checkout), ("repo2", tmp_path / "sessions" / "s2" / "repo")):
        (common / "worktrees" / name / "commondir").write_text("../..\n")
        (common / "worktrees" / name / "gitdir").write_text(f"{owner / '.git'}\n")
    return str(source), common, checkout


def test_a_worktree_of_old_gets_its_own_metadata_only_and_nothing_shared_writable(tmp_path):
    source, common, checkout = make_worktree(tmp_path)
    own = common / "worktrees" / "repo1"
    assert git_binds(str(checkout), source) == [
        ("ro", str(common)),
        ("tmpfs", str(common / "worktrees")),
        ("rw", str(own)),
        # What ties the checkout to its metadata cannot be pointed elsewhere.
        ("ro", str(checkout / ".git")),
        ("ro", str(own / "commondir")),
        ("ro", str(own / "gitdir")),
    ]
    files = SessionFiles(str(checkout.parent), (str(checkout),), repository=source)
    args = session_args(str(checkout), files, [])
    # Hidden first, then its own metadata shown again over the hiding tmpfs.
    assert args.index("--tmpfs") < args.index(str(own))
    assert args.index(str(own)) < args.index(str(own / "commondir"))
    assert str(common / "hooks") not in args


def test_a_worktree_s_git_dir_is_shown_only_where_the_server_can_check_it(tmp_path):
    source, common, checkout = make_worktree(tmp_path)
    assert git_binds(str(checkout), None) == []  # no local repository on record
    assert git_binds(str(checkout), str(tmp_path / "elsewhere")) == []
    # Pointed at another session's worktree metadata: it names another checkout.
    (checkout / ".git").write_text(f"gitdir: {common / 'worktrees' / 'repo2'}\n")
    assert git_binds(str(checkout), source) == []
    # Pointed at metadata of its own making, whose common dir is the data dir.
    fake = checkout / "fake" / "worktrees" / "x"
    fake.mkdir(parents=True)
    (fake / "commondir").write_text(str(tmp_path) + "\n")
    (fake / "gitdir").write_text(f"{checkout / '.git'}\n")
    (checkout / ".git").write_text(f"gitdir: {fake}\n")
    assert git_binds(str(checkout), source) == []


def test_a_local_clone_reads_its_source_s_objects_and_nothing_else_of_it(tmp_path):
    source, common, _ = make_worktree(tmp_path)
    clone = tmp_path / "sessions" / "s3" / "repo"
    (clone / ".git" / "objects").mkdir(parents=True)
    assert git_binds(str(clone), source) == [("ro", str(common / "objects"))]
    files = SessionFiles(str(clone.parent), (str(clone),), repository=source)
    args = session_args(str(clone), files, [])
    assert args[args.index(str(common / "objects")) - 1] == "--ro-bind"
    assert str(common) not in args
    writable = {args[i + 2] for i, word in enumerate(args) if word == "--bind"}
    assert writable == {str(clone)}
    # A bare source repository: its objects directly.
    bare = tmp_path / "bare.git"
    (bare / "objects").mkdir(parents=True)
    assert git_binds(str(clone), str(bare)) == [("ro", str(bare / "objects"))]


def test_a_clone_or_a_plain_directory_needs_no_git_binds(tmp_path):
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    assert git_binds(str(tmp_path / "clone"), None) == []
    assert git_binds(str(tmp_path / "clone"), str(tmp_path)) == []
    assert git_binds(str(tmp_path), str(tmp_path)) == []
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / ".git").write_text("not a gitdir line\n")
    assert git_binds(str(tmp_path / "odd"), str(tmp_path)) == []


def test_the_bwrap_launcher_wraps_the_agent_and_gives_it_a_private_tmp_and_home(tmp_path):
    reactor = FakeProcessReactor()
    launcher = BwrapLauncher(reactor, "/usr/bin/bwrap", ["/opt"])
    launcher.launch(ProcessProtocol(), launch(cwd=str(tmp_path)))
    [spawned] = reactor.spawned
    assert spawned.executable == "/usr/bin/bwrap"
    args = spawned.args
    assert args[0] == "/usr/bin/bwrap"
    assert args[args.index("--") + 1 :] == ["/opt/node", "/opt/pi.js", "--mode", "rpc"]
    assert ("/usr", "/usr") in pairs(args, "--ro-bind")
    tmpfs = [args[i + 1] for i, word in enumerate(args) if word == "--tmpfs"]
    assert "/tmp" in tmpfs and "/home/me" in tmpfs
    for option in ("--unshare-pid", "--die-with-parent", "--proc", "--dev"):
        assert option in args
    assert "--unshare-net" not in args  # the model API needs the network
    assert (str(tmp_path), str(tmp_path)) in pairs(args, "--bind")  # an agent of no session
    assert spawned.env == {"HOME": "/home/me", "PATH": "/usr/bin", "TMPDIR": "/tmp"}


def test_a_one_shot_runs_in_the_session_s_sandbox_without_network_or_secrets(tmp_path):
    session = tmp_path / "sessions" / "s1"
    checkout, shadow = session / "repo", session / "git-x"
    for directory in (checkout, shadow):
        directory.mkdir(parents=True)
    files = SessionFiles(str(session), (str(checkout),))
    launcher = BwrapLauncher(FakeProcessReactor(), "/usr/bin/bwrap", ["/opt"])
    confine = launcher.one_shot(files, str(checkout), [str(shadow)])
    env = {
        "PATH": "/usr/bin",
        "LC_ALL": "C",
        "GITHUB_TOKEN": "secret",
        "PI_SERVER_AUTH_TOKEN": "secret",
        "GIT_INDEX_FILE": f"{shadow}/index",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_VALUE_0": "Authorization: secret",
    }
    argv, kept = confine("git", env)
    assert argv[0] == "/usr/bin/bwrap" and argv[-2:] == ["--", "git"]
    assert "--unshare-net" in argv
    writable = pairs(argv, "--bind")
    assert (str(checkout), str(checkout)) in writable and (str(shadow), str(shadow)) in writable
    assert (str(session), str(session)) in pairs(argv, "--ro-bind")
    assert argv[argv.index("--chdir") + 1] == str(checkout)
    assert kept == {
        "PATH": "/usr/bin",
        "LC_ALL": "C",
        "GIT_INDEX_FILE": f"{shadow}/index",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    # Unconfined where the agent is too, or where the server cannot tell.
    assert LocalLauncher(FakeProcessReactor()).one_shot(files, str(checkout), []) is None
    template = CommandTemplateLauncher(FakeProcessReactor(), ("/usr/bin/env",))
    assert template.one_shot(files, str(checkout), []) is None


FAKE_PI = """#!/bin/sh
# Notes its arguments and what it was given to compile into, as pi with jiti would.
echo "$@" >> "{calls}"
mkdir -p "$TMPDIR/jiti" "$NODE_COMPILE_CACHE/v22"
echo compiled > "$TMPDIR/jiti/extensions-native_tools.0123.mjs"
echo code > "$NODE_COMPILE_CACHE/v22/entry"
"""


def test_the_server_fills_the_caches_once_per_pi_and_extension(tmp_path):
    calls = tmp_path / "calls"
    pi = executable(tmp_path / "pi", FAKE_PI.replace("{calls}", str(calls)))
    extension = tmp_path / "native_tools.ts"
    extension.write_text("export default 1\n")
    cache = tmp_path / "node-compile-cache"
    env = {"PATH": "/usr/bin:/bin", "SECRET_TOKEN": "x"}
    fill(cache, [str(pi)], env, "1.6.0", extension, "tools-file")
    fill(cache, [str(pi)], env, "1.6.0", extension, "tools-file")
    [call] = calls.read_text().splitlines()
    assert call.startswith(f"--mode rpc --no-session --no-tools -e {extension} --tools-file=")
    assert (cache / "jiti" / "extensions-native_tools.0123.mjs").read_text() == "compiled\n"
    extension.write_text("export default 2\n")
    fill(cache, [str(pi)], env, "1.6.0", extension, "tools-file")
    assert len(calls.read_text().splitlines()) == 2  # a new extension: filled again


def test_sandboxed_agents_read_node_s_cache_and_get_their_own_copy_of_jiti_s(tmp_path):
    cache = tmp_path / "node-compile-cache"
    (cache / "node").mkdir(parents=True)
    (cache / "jiti").mkdir()
    (cache / "jiti" / "ext.mjs").write_text("compiled")
    session = tmp_path / "sessions" / "s1"
    (session / "workspace").mkdir(parents=True)
    files = SessionFiles(str(session), (str(session / "workspace"),), cache=str(session / "cache"))
    reactor = FakeProcessReactor()
    BwrapLauncher(reactor, "/usr/bin/bwrap", [], cache=cache).launch(
        ProcessProtocol(), launch(cwd=str(session / "workspace"), files=files)
    )
    [spawned] = reactor.spawned
    assert (str(cache / "node"), str(cache / "node")) in pairs(spawned.args, "--ro-bind")
    assert spawned.env["NODE_COMPILE_CACHE"] == str(cache / "node")
    own = session / "cache" / "jiti"
    assert (str(own), "/tmp/jiti") in pairs(spawned.args, "--bind")
    assert (own / "ext.mjs").read_text() == "compiled"
    # The session's copy is its own from then on.
    (own / "ext.mjs").write_text("the agent's")
    assert session_jiti(cache, str(session / "cache")) == str(own)
    assert (own / "ext.mjs").read_text() == "the agent's"
    assert (cache / "jiti" / "ext.mjs").read_text() == "compiled"


def test_check_bwrap_says_why_bubblewrap_is_not_usable(tmp_path):
    with pytest.raises(BwrapUnusable, match="not found"):
        check_bwrap(str(tmp_path / "no-bwrap"), {})
    failing = executable(tmp_path / "bwrap", "#!/bin/sh\necho 'no namespaces' >&2\nexit 1\n")
    with pytest.raises(BwrapUnusable, match=r"failed \(exit 1\): no namespaces"):
        check_bwrap(str(failing), {"PATH": "/usr/bin:/bin"})
    check_bwrap(str(executable(tmp_path / "fine", "#!/bin/sh\nexit 0\n")), {})


def test_a_template_fills_in_its_placeholders_before_the_agent_command():
    words = parse_template(
        "sh -c 'exec \"$@\"' {session}-x --uid={uid} {cwd} {{literal}}", "/usr/bin:/bin"
    )
    assert words[0].endswith("/sh")
    reactor = FakeProcessReactor()
    CommandTemplateLauncher(reactor, words, uid=1234).launch(ProcessProtocol(), launch())
    [spawned] = reactor.spawned
    assert spawned.executable == words[0]
    assert spawned.args == [
        words[0],
        "-c",
        'exec "$@"',
        "s1-x",
        "--uid=1234",
        "/data/sessions/s1/workspace",
        "{literal}",
        "/opt/node",
        "/opt/pi.js",
        "--mode",
        "rpc",
    ]
    assert spawned.path == "/data/sessions/s1/workspace"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("", "empty"),
        ("sh 'unclosed", "cannot split"),
        ("sh {home}", r"unknown placeholder \{home\}"),
        ("sh {cwd", "expected '}'"),
        ("{cwd}/run", "cannot be a placeholder"),
        ("no-such-program-here {cwd}", "not found"),
    ],
)
def test_a_bad_template_is_refused_saying_why(template, problem):
    with pytest.raises(BadTemplate, match=problem):
        parse_template(template, "/usr/bin:/bin")


class RecordingLauncher(LocalLauncher):
    def __init__(self, reactor):
        super().__init__(reactor)
        self.launched = []

    def launch(self, protocol, launch):
        self.launched.append(launch)
        return super().launch(protocol, launch)


def test_the_supervisor_starts_agents_through_its_launcher():
    reactor = FakeProcessReactor()
    launcher = RecordingLauncher(reactor)
    supervisor = AgentSupervisor(
        reactor,
        ["/opt/node", "/opt/pi.js"],
        "/data",
        {"PATH": "/usr/bin", "SECRET": "x"},
        {"SECRET"},
        launcher=launcher,
    )
    supervisor.startService()
    files = SessionFiles("/data/sessions/s1", ("/data/sessions/s1/workspace",))
    agent = supervisor.spawn(
        "s1",
        ["--no-session"],
        "/data/sessions/s1/workspace",
        lambda event, raw: None,
        agent_dir="/data/sessions/s1/agent",
        files=files,
    )
    [launched] = launcher.launched
    assert launched == AgentLaunch(
        key="s1",
        executable="/opt/node",
        argv=("/opt/node", "/opt/pi.js", "--mode", "rpc", "--no-session"),
        cwd="/data/sessions/s1/workspace",
        env={
            "PATH": "/usr/bin",
            "PI_CODING_AGENT_DIR": "/data/sessions/s1/agent",
            "PI_SKIP_VERSION_CHECK": "1",
        },
        files=files,
    )
    assert agent.pid == reactor.spawned[0].process.pid


def test_a_fifo_or_a_link_in_the_agents_git_files_blocks_nothing(tmp_path):
    """The agent owns a clone's .git: a gitfile naming a FIFO, a FIFO as the .git file
    itself, or a link are refused without being opened for a blocking read (one FIFO
    held the reactor thread: every session stopped)."""
    source, common, checkout = make_worktree(tmp_path)
    own = common / "worktrees" / "repo1"
    os.unlink(own / "gitdir")
    os.mkfifo(own / "gitdir")
    assert git_binds(str(checkout), source) == []
    os.unlink(checkout / ".git")
    os.mkfifo(checkout / ".git")
    assert git_binds(str(checkout), source) == []
    os.unlink(checkout / ".git")
    os.symlink(own, checkout / ".git")
    assert git_binds(str(checkout), source) == []
    os.unlink(checkout / ".git")
    (tmp_path / "linked").write_text(f"gitdir: {own}\n")
    os.symlink(tmp_path / "linked", checkout / ".git")
    assert git_binds(str(checkout), source) == []
