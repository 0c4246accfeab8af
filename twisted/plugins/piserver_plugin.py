from twisted.application.service import ServiceMaker

piserver = ServiceMaker(
    "pi-server",
    "piserver.tap",
    "WebSocket server that drives the pi coding agent",
    "piserver",
)
