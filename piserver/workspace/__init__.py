"""
What a client can do with a code session's checkout: see what the agent changed
(``session.diff``, ``session.files``, ``session.read_file``, the ``files_changed``
event) and ship it (``session.commit``, ``session.push``, ``session.pull_request``).
"""
