"""Extension availability: which extensions are online (registered) and free (an endpoint not
in a live call).

Queues dispatch to free operators and re-evaluate on every change, so this module publishes an
`AvailabilityChanged` event whenever an extension registers, unregisters, expires, or one of
its endpoints starts or ends a call (reference §3.3). A binding that stopped answering
keep-alives (`Binding.reachable` false) is not an endpoint: it is neither rung nor online.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .events import LegEnded, LegEvent
from .registrar import Binding, RegistrationEvent

if TYPE_CHECKING:
    from .endpoint import UserAgent
    from .legs import Leg

log = logging.getLogger("softswitch.extensions")


@dataclass(frozen=True)
class AvailabilityChanged:
    extension: str
    online: bool
    free: bool
    reason: str  # registered | unregistered | expired | unreachable | reachable | call_started | call_ended


class Extensions:
    """Owned by the UserAgent; UA thread only."""

    def __init__(self, ua: "UserAgent") -> None:
        self.ua = ua
        self._busy: dict[str, dict[str, set[str]]] = {}  # extension -> endpoint key -> leg ids
        self._listeners: list[Callable[[AvailabilityChanged], None]] = []
        self._unsubscribe = ua.registrar.subscribe(self._on_registration)

    # ---- questions --------------------------------------------------------------------------
    def endpoints(self, extension: str, *, only_free: bool = False) -> list[Binding]:
        """Registered, reachable endpoints of an extension; with `only_free`, those not in a live call."""
        bindings = [b for b in self.ua.registrar.bindings_for_extension(extension) if b.reachable]
        if not only_free:
            return bindings
        busy = self._busy.get(extension, {})
        whole_extension_busy = bool(busy.get("*"))
        return [b for b in bindings if not whole_extension_busy and not busy.get(_endpoint_key(b))]

    def online(self, extension: str) -> bool:
        return any(b.reachable for b in self.ua.registrar.bindings_for_extension(extension))

    def free(self, extension: str) -> bool:
        return bool(self.endpoints(extension, only_free=True))

    # ---- calls ------------------------------------------------------------------------------
    def track_leg(self, leg: "Leg", extension: str, binding: Binding | None = None) -> None:
        """Count `leg` as a live call of `extension` (of one endpoint when `binding` is known,
        otherwise of the whole extension) until it ends."""
        key = _endpoint_key(binding) if binding is not None else "*"
        self._busy.setdefault(extension, {}).setdefault(key, set()).add(leg.id)

        def on_event(event: LegEvent) -> None:
            if isinstance(event, LegEnded):
                legs = self._busy.get(extension, {}).get(key)
                if legs is not None:
                    legs.discard(leg.id)
                    if not legs:
                        del self._busy[extension][key]
                self._publish(extension, "call_ended")

        leg.subscribe(on_event)
        self._publish(extension, "call_started")

    # ---- events -----------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[AvailabilityChanged], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _on_registration(self, event: RegistrationEvent) -> None:
        if event.kind == "refreshed":
            return
        self._publish(event.binding.extension, event.kind)

    def _publish(self, extension: str, reason: str) -> None:
        change = AvailabilityChanged(extension, self.online(extension), self.free(extension), reason)
        log.debug("extension %s: online=%s free=%s (%s)", extension, change.online, change.free, reason)
        for listener in list(self._listeners):
            self.ua.guard("availability listener", listener, change)

    def close(self) -> None:
        self._unsubscribe()
        self._listeners.clear()


def _endpoint_key(binding: Binding) -> str:
    return f"{binding.username}|{binding.contact}"
