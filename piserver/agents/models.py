"""
The models pi can use, for calls that name no session: answered by a helper
agent started on demand and stopped when it has been idle for a while.
"""

from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from piserver.agents import agentdir
from piserver.agents.launchers import SessionFiles
from piserver.common.errors import InvalidParams

HELPER_KEY = "models-helper"
# Fields of pi's model objects that can hold credentials from models.json.
PRIVATE_MODEL_FIELDS = frozenset({"headers", "apiKey"})
DEFAULT_IDLE_TIMEOUT = 60.0


class ModelCatalog:
    log = Logger()

    def __init__(
        self,
        reactor,
        supervisor,
        workspace: Path,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        data_dir: Path | None = None,
    ):
        self._reactor = reactor
        self._supervisor = supervisor
        self._workspace = Path(workspace)
        # With a data dir, the helper gets an agent dir of its own (see agentdir), which
        # a sandbox can show it without the data dir's server files.
        self._data_dir = data_dir
        self._idle_timeout = idle_timeout
        self._agent = None
        self._idle_call = None

    async def available(self) -> list[dict]:
        agent = self._agent
        if agent is not None and agent.exit is None and agent.stop_requested:
            await agent.exited  # stopping for idleness just now: wait, then start anew
        if agent is None or agent.exit is not None or agent.stop_requested:
            self._workspace.mkdir(mode=0o700, parents=True, exist_ok=True)
            own = {}
            if self._data_dir is not None:
                agent_dir = self._workspace / "agent"
                agentdir.prepare(self._data_dir, agent_dir)
                own = {
                    "agent_dir": str(agent_dir),
                    "files": SessionFiles(
                        directory=str(self._workspace),
                        writable=(str(agent_dir),),
                        readable=tuple(str(p) for p in agentdir.shared_paths(self._data_dir)),
                        cache=str(self._workspace / "cache"),
                    ),
                }
            # No session file and no tools: it only answers questions about models.
            agent = self._agent = self._supervisor.spawn(
                HELPER_KEY,
                ["--no-session", "--no-tools"],
                str(self._workspace),
                lambda event, raw: None,
                **own,
            )
            self.log.info("started the models helper agent")
        self._touch()
        await agent.ready
        data = await agent.command("get_available_models")
        self._touch()
        return [public_model(m) for m in (data or {}).get("models", [])]

    async def require(self, provider: str, model_id: str) -> dict:
        """The model named, or InvalidParams naming it when pi does not offer it."""
        for model in await self.available():
            if model.get("provider") == provider and model.get("id") == model_id:
                return model
        raise InvalidParams(f"model {provider}/{model_id} is not available")

    def _touch(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)
        else:
            self._idle_call = self._reactor.callLater(self._idle_timeout, self._stop_idle)

    def _stop_idle(self) -> defer.Deferred | None:
        self._idle_call = None
        if self._agent is not None:
            self.log.info("stopping the idle models helper agent")
            return self._supervisor.stop(self._agent)
        return None


def public_model(model):
    """A model object as clients may see it: without credentials."""
    if not isinstance(model, dict):
        return model
    return {k: v for k, v in model.items() if k not in PRIVATE_MODEL_FIELDS}


def public_state(state: dict) -> dict:
    """pi's get_state answer with its model made public."""
    if isinstance(state.get("model"), dict):
        return {**state, "model": public_model(state["model"])}
    return state
