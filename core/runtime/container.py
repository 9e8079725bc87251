"""The container: knows every component, starts them in dependency order, stops them in reverse.

Usage::

    container = Container(StartPolicy(attempts=3))
    container.register(Database(url), Cache(redis_url), OutboxRelay())
    async with container.running():      # database and cache start together, then the relay
        db = container.get(Database)
        ...                              # on exit: relay stops first, then database and cache
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar, overload

from core.config import StartPolicy
from core.retries import Retry
from core.runtime.health import Health, HealthState
from core.runtime.lifecycle import Component, FatalStartError, Lifecycle, Status, Transition
from core.runtime.monitor import ChangeFeed, HealthMonitor
from core.runtime.tasks import BackgroundTask

C = TypeVar("C", bound=Component)


class RegistrationError(ValueError):
    """A component names an unknown dependency, closes a cycle or reuses a name."""


class StartError(RuntimeError):
    """The container could not start; `cause` says which component failed and why."""


class StopError(RuntimeError):
    """One or more components failed to stop; every failure is listed."""


@dataclass(frozen=True, slots=True)
class ComponentSummary:
    name: str
    version: str
    status: Status
    health: Health
    uptime: float
    depends_on: tuple[str, ...]
    groups: tuple[str, ...]
    transitions: list[Transition]
    health_history: list[Health]


@dataclass(frozen=True, slots=True)
class ContainerSummary:
    status: Status
    health: Health
    score: int
    uptime: float
    components: list[ComponentSummary]
    transitions: list[Transition]
    health_history: list[Health]

    @property
    def healthy_components(self) -> int:
        return sum(c.health.state is HealthState.HEALTHY for c in self.components)


class Container:
    """Registry and runner of components. See the module docstring for an example."""

    def __init__(
        self,
        policy: StartPolicy | None = None,
        *,
        health_interval: float = 1.0,
        health_timeout: float = 1.0,
        health_failures: int = 2,
        health_recoveries: int = 1,
    ) -> None:
        self.policy = policy or StartPolicy()
        self.lifecycle = Lifecycle("container")
        self.changes = ChangeFeed()
        self.monitor = HealthMonitor(
            health_interval,
            health_timeout,
            self.changes.notify,
            failures=health_failures,
            recoveries=health_recoveries,
        )
        self._components: dict[str, Component] = {}
        self._levels: list[list[Component]] = []
        self._monitoring = BackgroundTask("health-monitor")
        self.lifecycle.observe(lambda _: self.changes.notify())

    # -- registry -------------------------------------------------------------------------

    def register(self, *components: Component) -> None:
        """Adds components; their dependencies must be registered already or in this call.

        Raises:
            RegistrationError: naming the duplicate, the unknown dependency or the cycle.
        """
        if self.lifecycle.status not in (Status.STOPPED, Status.ERROR):
            raise RegistrationError("components can only be registered while stopped")
        names = [c.name for c in components]
        for component in components:
            if not component.name:
                raise RegistrationError(f"{type(component).__name__} has no name")
            if component.name in self._components or names.count(component.name) > 1:
                raise RegistrationError(f"component {component.name!r} is registered twice")
        batch = {c.name: c for c in components}
        known = self._components | batch
        for component in components:
            missing = [d for d in component.depends_on if d not in known]
            if missing:
                raise RegistrationError(
                    f"component {component.name!r} depends on unknown {', '.join(missing)}"
                )
        for component in components:
            if component.faces_callers and component.depends_on:
                raise RegistrationError(
                    f"component {component.name!r} faces callers and starts first: "
                    "it cannot depend on others"
                )
        _reject_cycles(batch)
        self._components = known
        self._levels = _levels(self._components)
        for component in components:
            component.lifecycle.observe(self._on_transition(component))
            self.monitor.record_status(component)

    @overload
    def get(self, key: str) -> Component: ...
    @overload
    def get(self, key: type[C]) -> C: ...
    def get(self, key: str | type[C]) -> Component | C:
        """Returns the component with this name, or the only one of this type."""
        if isinstance(key, str):
            try:
                return self._components[key]
            except KeyError:
                raise LookupError(f"no component named {key!r}") from None
        matches = [c for c in self._components.values() if isinstance(c, key)]
        if len(matches) != 1:
            found = ", ".join(c.name for c in matches) or "none"
            raise LookupError(f"expected one {key.__name__}, found {found}")
        return matches[0]

    def provide(self, kind: type[C], make: Callable[[], C]) -> C:
        """The one component of type `kind`, registering `make()` if there is none yet.

        Services that share a resource (one database, one cache per process) ask for it
        this way, so whichever registers first provides it for all.
        """
        existing = [c for c in self._components.values() if isinstance(c, kind)]
        if existing:
            return self.get(kind)
        component = make()
        self.register(component)
        return component

    def group(self, name: str) -> list[Component]:
        """Every component in the group, in start order."""
        return [c for c in self.components if name in c.groups]

    @property
    def components(self) -> list[Component]:
        """Every component in start order."""
        return [c for level in self.levels for c in level]

    @property
    def levels(self) -> list[list[Component]]:
        """Components grouped by start level: each level only depends on earlier ones.
        Those that face callers come first, in a level of their own."""
        front = [c for level in self._levels for c in level if c.faces_callers]
        rest = [[c for c in level if not c.faces_callers] for level in self._levels]
        return [level for level in (front, *rest) if level]

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts every level in order, the components of a level in parallel.

        If a component still fails after its retries, the ones already started are
        stopped in reverse order and the container ends in ERROR.

        Raises:
            StartError: naming the component and the cause.
        """
        await self.lifecycle.move(Status.STARTING, "start requested")
        try:
            for level in self.levels:
                results = await asyncio.gather(
                    *(self._start_one(c) for c in level), return_exceptions=True
                )
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise failures[0]
        except BaseException as exc:
            cause = "cancelled" if isinstance(exc, asyncio.CancelledError) else _describe(exc)
            await self._stop_levels()  # only what reached RUNNING, in reverse order
            await self.lifecycle.move(Status.ERROR, f"start failed: {cause}")
            if isinstance(exc, Exception) and not isinstance(exc, StartError):
                raise StartError(cause) from exc
            raise
        await self.lifecycle.move(Status.RUNNING, "all components running")
        components = self.components
        self._monitoring.start(self.monitor.run(components))

    async def stop(self, cause: str = "stop requested") -> None:
        """Stops every level in reverse order; keeps going past failures and reports them all.

        Raises:
            StopError: listing every component that failed to stop.
        """
        if self.lifecycle.status is not Status.RUNNING:
            return
        await self.lifecycle.move(Status.STOPPING, cause)
        await self._monitoring.stop()
        failures = await self._stop_levels()
        if failures:
            await self.lifecycle.move(Status.ERROR, "stop failed: " + "; ".join(failures))
            raise StopError("; ".join(failures))
        await self.lifecycle.move(Status.STOPPED, "all components stopped")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Container]:
        """Starts the container for the block and always stops it afterwards."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def summary(self) -> ContainerSummary:
        """Every component's status, health, uptime, version, dependencies and history."""
        components = [
            ComponentSummary(
                name=c.name,
                version=c.version,
                status=c.status,
                health=self.monitor.latest(c),
                uptime=c.lifecycle.uptime,
                depends_on=tuple(c.depends_on),
                groups=tuple(c.groups),
                transitions=list(c.lifecycle.history),
                health_history=self.monitor.history(c.name),
            )
            for c in self.components
        ]
        scores = [c.health.state.score for c in components]
        return ContainerSummary(
            status=self.lifecycle.status,
            health=self.monitor.overall(),
            score=round(sum(scores) / len(scores)) if scores else 100,
            uptime=self.lifecycle.uptime,
            components=components,
            transitions=list(self.lifecycle.history),
            health_history=self.monitor.overall_history(),
        )

    def ready(self, names: Iterable[str] | None = None) -> bool:
        """True when the container is RUNNING and none of the named components is UNHEALTHY."""
        return self.lifecycle.status is Status.RUNNING and self.serving(names)

    def serving(self, names: Iterable[str] | None = None) -> bool:
        """True when none of the named components (default: every one) is UNHEALTHY."""
        chosen = self.components if names is None else [self.get(n) for n in names]
        return all(self.monitor.latest(c).state.serving for c in chosen)

    # -- internals ------------------------------------------------------------------------

    def _on_transition(self, component: Component) -> Callable[[Transition], None]:
        def observer(_: Transition) -> None:
            self.monitor.record_status(component)
            self.changes.notify()

        return observer

    async def _start_one(self, component: Component) -> None:
        policy = self.policy
        tries, reason = 0, ""

        async def start() -> None:
            nonlocal tries, reason
            tries += 1
            of = f"/{policy.attempts}" if policy.attempts else ""
            cause = "start requested" if tries == 1 else f"retry {tries}{of}"
            await component.lifecycle.move(Status.STARTING, cause)
            deadline = asyncio.timeout(policy.start_timeout)
            try:
                async with deadline:
                    await component.start()
            except asyncio.CancelledError:
                await component.lifecycle.move(Status.ERROR, "start cancelled")
                raise
            except Exception as exc:
                reason = _describe(exc)
                if deadline.expired():  # ours, not a TimeoutError of the component's own
                    reason = f"start timed out after {policy.start_timeout:g}s"
                await component.lifecycle.move(Status.ERROR, reason)
                raise

        try:
            await _start_retry(policy).call(start, component=component.name)
        except Exception as exc:
            raise StartError(f"{component.name}: {reason}") from exc
        await component.lifecycle.move(Status.RUNNING, "started")

    async def _stop_levels(self) -> list[str]:
        """Stops the running components level by level in reverse; returns the failures."""
        failures: list[str] = []
        levels = self.levels
        if levels and levels[0][0].faces_callers:  # they stop first, as they started
            levels = [levels[0], *levels[1:][::-1]]
        else:
            levels.reverse()
        for level in levels:
            running = [c for c in level if c.status is Status.RUNNING]
            failures += [f for f in await asyncio.gather(*map(self._stop_one, running)) if f]
        return failures

    async def _stop_one(self, component: Component) -> str:
        await component.lifecycle.move(Status.STOPPING, "stop requested")
        limit = component.stop_timeout or self.policy.stop_timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await component.stop()
        except Exception as exc:
            reason = _describe(exc)
            if deadline.expired():
                reason = f"stop timed out after {limit:g}s"
            await component.lifecycle.move(Status.ERROR, reason)
            return f"{component.name}: {reason}"
        await component.lifecycle.move(Status.STOPPED, "stopped")
        return ""


def _start_retry(policy: StartPolicy) -> Retry:
    """Starts retried `policy.attempts` times (0: no limit) within `policy.deadline`
    seconds (0: none), FatalStartError never.

    Retry n waits base_delay * 2**(n-1) / 2 plus up to base_delay / 2 of jitter, at most
    max_delay: the first wait lies between base_delay / 2 and base_delay.
    """
    return Retry(
        "component.start",
        on=_transient,
        attempts=policy.attempts or None,
        timeout=policy.deadline or None,
        wait_initial=policy.base_delay / 2,
        wait_max=policy.max_delay,
        wait_jitter=policy.base_delay / 2,
    )


def _transient(exc: Exception) -> bool:
    return not isinstance(exc, FatalStartError)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, StartError):
        return text
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _reject_cycles(batch: dict[str, Component]) -> None:
    """Depth-first search over the new components; names the cycle it finds."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise RegistrationError("dependency cycle: " + " -> ".join(cycle))
        if name in done or name not in batch:
            return
        for dep in batch[name].depends_on:
            visit(dep, [*path, name])
        done.add(name)

    for name in batch:
        visit(name, [])


def _levels(components: dict[str, Component]) -> list[list[Component]]:
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            deps = components[name].depends_on
            depth[name] = 1 + max((depth_of(d) for d in deps), default=-1)
        return depth[name]

    levels: list[list[Component]] = []
    for name in components:
        level = depth_of(name)
        levels.extend([] for _ in range(level + 1 - len(levels)))
        levels[level].append(components[name])
    return levels
