"""Extensions: what a third-party package can add to Corral, through pluggy.

A package registers a module or object under the ``corral`` entry-point group::

    [project.entry-points.corral]
    my_extension = "my_package.corral_plugin"

and implements any of the hooks below, each marked ``@corral.plugins.hookimpl``. Every
hook is called once, when a ``corral serve`` process builds its application, with the
process's ``Settings``; each returns a list (or None) that is added after Corral's own:

* ``corral_agent_profiles`` — agent profiles for runs (``corral.runs.profiles.Profile``),
  by the name ``--agent`` selects;
* ``corral_request_guards``, ``corral_response_observers``, ``corral_call_listeners`` —
  the gateway's three stages (``corral.gateway.hooks``);
* ``corral_span_sinks`` — receivers of every stored batch of span rows
  (``corral.traces.writer.Sink``: ``offer(rows)``, called from the writer's thread);
* ``corral_after_run_steps`` — steps run in order after a run's agent ends, after
  Corral's own (``corral.runs.steps.AfterRunStep``);
* ``corral_detectors`` — guards' detectors (``corral.guards.model.Detector``), watching
  every run and key beside Corral's own (names must differ; settings tune them by name).

docs/plugins.md is the guide. pluggy (the library pytest and datasette use) does the
registration and the calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from corral.errors import ConfigError

if TYPE_CHECKING:
    from corral.settings import Settings

GROUP = "corral"
"""The entry-point group extensions register under."""

hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class Specs:
    """The hook specification (each returns a list, or None for nothing)."""

    @hookspec
    def corral_agent_profiles(self, settings: Settings) -> list[Any] | None:
        """Agent profiles to offer runs, as ``corral.runs.profiles.Profile`` values."""

    @hookspec
    def corral_request_guards(self, settings: Settings) -> list[Any] | None:
        """Request guards (``corral.gateway.hooks.RequestGuard``)."""

    @hookspec
    def corral_response_observers(self, settings: Settings) -> list[Any] | None:
        """Response observers (``corral.gateway.hooks.ResponseObserver``)."""

    @hookspec
    def corral_call_listeners(self, settings: Settings) -> list[Any] | None:
        """Call listeners (``corral.gateway.hooks.CallListener``)."""

    @hookspec
    def corral_span_sinks(self, settings: Settings) -> list[Any] | None:
        """Span sinks (``corral.traces.writer.Sink``)."""

    @hookspec
    def corral_after_run_steps(self, settings: Settings) -> list[Any] | None:
        """After-run steps (``corral.runs.steps.AfterRunStep``), run after Corral's own."""

    @hookspec
    def corral_detectors(self, settings: Settings) -> list[Any] | None:
        """Guards' detectors (``corral.guards.model.Detector``), after Corral's own."""


class Extensions:
    """The plug-ins of one process and what they contribute."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager

    @classmethod
    def load(cls, *plugins: object, entry_points: bool = True) -> Extensions:
        """``plugins`` registered directly (tests, embedders) and, unless told not to,
        every ``corral`` entry point installed."""
        manager = pluggy.PluginManager(GROUP)
        manager.add_hookspecs(Specs)
        for plugin in plugins:
            manager.register(plugin)
        if entry_points:
            try:
                manager.load_setuptools_entrypoints(GROUP)
            except Exception as exc:  # an installed package's import: anything can fail
                raise ConfigError(
                    f"an extension registered under the {GROUP!r} entry points failed to load "
                    f"({type(exc).__name__}: {exc}); fix it or uninstall its package"
                ) from exc
        return cls(manager)

    @property
    def names(self) -> list[str]:
        """The installed extensions, as ``package version`` (``corral serve`` prints them)."""
        return sorted(
            f"{dist.project_name} {dist.version}" for _, dist in self.manager.list_plugin_distinfo()
        )

    def collect(self, hook: str, settings: Settings) -> list[Any]:
        """Every plug-in's contribution to ``hook``, flattened, in registration order."""
        results = getattr(self.manager.hook, hook)(settings=settings)
        # pluggy calls the last registered first; keep the order they were registered in.
        return [item for result in reversed(results) if result for item in result]
