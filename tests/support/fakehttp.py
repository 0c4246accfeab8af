"""A fake treq ``HTTPClient`` for unit tests of code that POSTs and reads the answer with
``treq.collect``: each post is recorded and answered by the test (at once or later)."""

import attr
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone


@attr.s
class FakeResponse:
    code: int = attr.ib(default=201)
    body: bytes = attr.ib(default=b"")
    # How many bytes the reader took before it stopped (treq.collect aborts on an error).
    delivered: int = attr.ib(default=0)
    aborted: bool = attr.ib(default=False)

    @property
    def length(self):
        return len(self.body)

    def deliverBody(self, protocol):
        protocol.transport = self
        for start in range(0, len(self.body), 1024):
            if self.aborted:
                return
            chunk = self.body[start : start + 1024]
            self.delivered += len(chunk)
            protocol.dataReceived(chunk)
        if not self.aborted:
            protocol.connectionLost(Failure(ResponseDone()))

    def stopProducing(self):
        self.aborted = True

    def loseConnection(self):
        self.aborted = True


@attr.s
class Post:
    url: str = attr.ib()
    data: bytes = attr.ib()
    headers: dict = attr.ib()
    answer: Deferred = attr.ib()


class FakeHttp:
    """``answers`` are given in turn (a ``FakeResponse``, an exception, or None: the post
    waits until the test fires ``posts[i].answer``)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.posts: list[Post] = []

    def post(self, url, data=None, headers=None):
        answer = self.answers.pop(0) if self.answers else FakeResponse()
        if answer is None:
            d = Deferred()
        elif isinstance(answer, Exception):
            d = Deferred()
            d.errback(answer)
        else:
            d = succeed(answer)
        self.posts.append(Post(url, data, headers, d))
        return d
