"""The wire: envelope, dispatch, connections and what they share (see issue 22's layout)."""
