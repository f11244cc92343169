"""The ``tritonctl`` command line: a thin layer of click commands over the library.

Each command module registers its commands on :data:`manager.cli.app.main` when imported;
commands parse options, call the library, and print. A ``ManagerError`` becomes a one-line
message on stderr and the error's exit code.
"""

from manager.cli import (  # noqa: F401
    api_cmds,
    endpoint_cmds,
    memory_cmds,
    publish_cmds,
    server_cmds,
    serving_cmds,
)
from manager.cli.app import main

__all__ = ["main"]
