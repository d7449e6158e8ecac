"""The composition root: one package that reads as the list of the service's parts.

:mod:`acgs.lifecycle.app` builds them in start order (``build(settings)``
returns the :class:`~acgs.lifecycle.app.Application`), one module per part
that has wiring of its own (database, audit, callers, escalations, policy,
offline), all run by one :mod:`~acgs.lifecycle.supervisor`. Only this package
constructs adapters.
"""

from acgs.lifecycle.app import Application, build

__all__ = ["Application", "build"]
