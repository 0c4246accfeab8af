from twisted.python import usage


class Options(usage.Options):
    pass


def makeService(options):
    from twisted.application.service import MultiService
    return MultiService()
