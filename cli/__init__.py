"""The `mesh` command: run services, ask a running process how it is, and call services.

`cli.main` builds the parser from what is installed: `mesh serve` and `mesh db upgrade`
from every declared service (`core.runtime.declaration.discover`), and each service's own
command group from its declaration. Everything printed goes through `cli.output`.
"""

from importlib.metadata import version

VERSION = version("meshkit")  # what `mesh --version`, the logs and the admin summary say
