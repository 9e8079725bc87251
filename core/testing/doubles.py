"""A container in which test doubles take the place of the components with their names.

A service's register function builds its components and hands them to the container
(`register`), or asks the container for a shared one (`provide`, e.g. the database). In a
`StandInContainer` both calls give way to a double registered under the same name: the
double is what starts, stops and reports health, and what `provide` and `get` return.
Code that a register function wired to the original directly (a bound method passed to
another component, say) keeps the original, so doubles suit the shared components best.

Usage::

    container = StandInContainer({"event-bus": RecordingBus()})
    services = register(container, settings)      # the bus the service asks for is the double
    container.check_replaced()                    # a name nothing registered is an error
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from core.config import StartPolicy
from core.runtime.container import Container, RegistrationError
from core.runtime.lifecycle import Component

C = TypeVar("C", bound=Component)


class StandInContainer(Container):
    """A `Container` whose components named in `doubles` are replaced by the doubles.

    Args:
        doubles: By component name, the object to run in its place; a double whose own
            `name` differs is renamed to the name it replaces.
        policy, health_interval, health_timeout, health_failures, health_recoveries: As
            for `Container`.
    """

    def __init__(
        self,
        doubles: Mapping[str, Component],
        policy: StartPolicy | None = None,
        *,
        health_interval: float = 1.0,
        health_timeout: float = 1.0,
        health_failures: int = 2,
        health_recoveries: int = 1,
    ) -> None:
        super().__init__(
            policy,
            health_interval=health_interval,
            health_timeout=health_timeout,
            health_failures=health_failures,
            health_recoveries=health_recoveries,
        )
        for name, double in doubles.items():
            if double.name != name:
                double.name = name
        self._doubles = dict(doubles)
        self._stood_in: dict[str, Component] = {}  # doubles registered so far, by name
        self._provided: dict[type[Any], Component] = {}

    def register(self, *components: Component) -> None:
        """Registers each component, or the double of its name in its place (once)."""
        chosen: list[Component] = []
        for component in components:
            double = self._doubles.get(component.name)
            if double is None:
                chosen.append(component)
            elif component.name not in self._stood_in:
                self._stood_in[component.name] = double
                chosen.append(double)
        super().register(*chosen)

    def provide(self, kind: type[C], make: Callable[[], C]) -> C:
        """The one component of type `kind`, or the double standing in for it."""
        if kind in self._provided:
            return cast(C, self._provided[kind])
        if any(isinstance(c, kind) for c in self.components):
            return self.get(kind)
        name = getattr(kind, "name", "")
        double = self._doubles.get(name) if name else None
        component: Component = make() if double is None else double
        self.register(component)
        self._provided[kind] = self._stood_in.get(component.name, component)
        return cast(C, self._provided[kind])

    def check_replaced(self) -> None:
        """Raises RegistrationError if a double's name matched no component."""
        unused = sorted(set(self._doubles) - set(self._stood_in))
        if unused:
            known = ", ".join(c.name for c in self.components) or "none"
            raise RegistrationError(
                f"no component named {', '.join(map(repr, unused))} to replace (there are: {known})"
            )
