"""The operator console: the guide's dashboard flows as server-rendered pages on the API listener.

The console is a client of the hub's own operator API, called in-process with the signed-in
operator's token, so every page and action is authorised by exactly the checks the API makes.
"""

from hub.console.router import install

__all__ = ["install"]
