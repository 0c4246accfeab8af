"""
Running pi-server in-process on loopback for integration tests: the real
service tree, the real pi agent, the scripted LLM, a real WebSocket client.
"""

import json
from pathlib import Path

from twisted.internet import reactor

from piserver.service import build_service
from piserver.sessions.session import SESSION_ID
from piserver.tap import Options
from tests.support.piagent import pi_option
from tests.support.wsclient import RpcClient

TOKEN = "integration-test-token"


class RunningServer:
    """One pi-server service over ``agent_dir`` (its data dir); restartable. With
    ``auth_token=None`` the server generates its token (see :attr:`token`)."""

    def __init__(self, agent_dir, pi_binary, extra_args=(), environ=None, auth_token=TOKEN):
        self.agent_dir = agent_dir
        self.pi_binary = pi_binary
        self.extra_args = list(extra_args)
        self.auth_token = auth_token
        self.environ = {**agent_dir.environment(), **(environ or {})}
        self.service = None
        self.clients = []

    def options(self) -> Options:
        options = Options(environ=self.environ)
        options.parseOptions(
            [
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--data-dir",
                str(self.agent_dir.path),
                "--pi",
                pi_option(self.pi_binary),
                *self.extra_args,
                *(["--auth-token", self.auth_token] if self.auth_token else []),
            ]
        )
        return options

    def start(self):
        self.service = build_service(self.options().config, reactor)
        self.service.startService()
        return self

    async def stop(self):
        for client in self.clients:
            if client.protocol is not None and not client.closed.called:
                client.drop()
        self.clients = []
        if self.service is not None:
            service, self.service = self.service, None
            await service.stopService()

    async def restart(self):
        await self.stop()
        return self.start()

    @property
    def token(self) -> str:
        return self.service.config.auth_token

    @property
    def port(self) -> int:
        return self.service.address.port

    @property
    def sessions(self):
        return self.service.getServiceNamed("sessions")

    @property
    def hub(self):
        return self.service.hub

    async def client(self, hello=True, deflate=False, token=None, **hello_params) -> RpcClient:
        """A client with the server token, or with ``token`` (a device's)."""
        client = await RpcClient.connect(
            reactor, self.port, token=token or self.token, deflate=deflate
        )
        self.clients.append(client)
        if hello:
            result = await client.call(
                "hello", {"client": {"name": "tests", "version": "1"}, **hello_params}
            )
            client.connection_id = result["connectionId"]
        return client


def session_directories(data_dir) -> list:
    """The session directories under ``data_dir/sessions`` other than warm agents' (those
    the pool keeps ready for the next create; see piserver.sessions.warm). One being made or
    removed has another name (piserver.sessions.intents)."""
    found = []
    for directory in sorted((Path(data_dir) / "sessions").iterdir()):
        if not SESSION_ID.match(directory.name):
            continue
        intent = directory / "intent.json"
        if intent.exists() and json.loads(intent.read_text()).get("action") == "warm":
            continue
        found.append(directory)
    return found
