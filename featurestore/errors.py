"""The errors featurestore raises for its users, in one hierarchy.

Library code (compile, apply, materialize, export, serve, the stream) raises
these; the CLI turns each into one message and exit code 1 (`cli.main`), and
prints a traceback only with `--debug`. A message says what went wrong and
what to do, on one line where it can (a list of diagnostics is the exception).
"""
from __future__ import annotations


class FeaturestoreError(Exception):
    """Base of every error meant for the user rather than for a developer."""


class UserError(FeaturestoreError):
    """A mistake in how a command or function was called that the user can fix."""


class ConfigError(UserError):
    """A problem with `featurestore.yaml` or the repo around it."""


class DefinitionError(UserError):
    """The `.feat` files do not compile (the message holds every diagnostic)."""


class DataError(UserError):
    """Data that does not match what the feature definitions declare: a
    source's schema, a labels file, a value the layout cannot hold."""


class MissingDependency(FeaturestoreError):
    """A command needs an extra that is not installed."""

    def __init__(self, module: str, extra: str, what: str):
        self.module, self.extra = module, extra
        super().__init__(f"{what} needs the '{extra}' extra (missing module {module!r}): "
                         f"pip install 'featurestore[{extra}]'")


class ServiceError(FeaturestoreError):
    """A service the command talks to failed: Redis, the feature server, a
    port already in use. The message names the service and what to try."""
