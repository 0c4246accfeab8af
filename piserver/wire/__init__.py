"""The wire protocol, independent of what the methods do.

- ``envelope``: parse requests into frozen values, encode replies and events;
- ``dispatch``: requests to handlers through a method table, one reply each;
- ``connection``: one client connection: frames in, replies and events out;
- ``ratelimit``: a token bucket per connection;
- ``hub``: where connections meet the method table;
- ``websocket``: the thin Autobahn adapter (upgrade checks, keepalive, frames).
"""
