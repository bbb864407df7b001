"""Model names to routes: an alias, then ``provider:model``, then providers that list the model,
then catch-all providers."""

from __future__ import annotations

from dataclasses import dataclass, field

from truckllm.config import AliasConfig, Config


@dataclass(frozen=True, slots=True)
class Target:
    provider_id: str
    model: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model name leads: targets in priority order (or to balance), and how to choose."""

    targets: tuple[Target, ...]
    balance: bool = False
    strategy: str | None = None
    context_fallback: str | None = None
    provider_ids: tuple[str, ...] = field(init=False)  # targets' providers, in order, once each

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "provider_ids", tuple(dict.fromkeys(t.provider_id for t in self.targets))
        )

    def target_for(self, provider_id: str) -> Target:
        for t in self.targets:
            if t.provider_id == provider_id:
                return t
        raise KeyError(provider_id)


_BUILT_LIMIT = 4096


class ModelResolver:
    """Client model name -> route: an alias, then ``provider:model``, then providers that list
    the model under its own name (in configuration order), then catch-all providers."""

    def __init__(self, cfg: Config) -> None:
        self._providers = {p.id for p in cfg.providers}
        self.aliases: dict[str, Route] = {}
        for name, spec in cfg.model_aliases.items():
            if isinstance(spec, AliasConfig):
                targets = tuple(Target(*s.split(":", 1)) for s in spec.targets)
                self.aliases[name] = Route(
                    targets, spec.mode == "balance", spec.strategy, spec.context_fallback
                )
            else:
                specs = (spec,) if isinstance(spec, str) else spec
                self.aliases[name] = Route(tuple(Target(*s.split(":", 1)) for s in specs))
        self.models: dict[str, list[Target]] = {}
        self._catch_all: list[str] = []  # providers listing "*": they serve any other model name
        for p in cfg.providers:
            for m in p.models:
                if m == "*":
                    self._catch_all.append(p.id)
                else:
                    self.models.setdefault(m, []).append(Target(p.id, m))
        self._listed = {name: Route(tuple(targets)) for name, targets in self.models.items()}
        self._built: dict[str, Route] = {}  # provider:model and catch-all routes, made once

    def resolve(self, name: str) -> Route | None:
        route = self.aliases.get(name) or self._built.get(name)
        if route is not None:
            return route
        pid, sep, model = name.partition(":")
        if sep and model and pid in self._providers:
            return self._remember(name, Route((Target(pid, model),)))
        route = self._listed.get(name)
        if route is not None:
            return route
        if self._catch_all:
            return self._remember(name, Route(tuple(Target(p, name) for p in self._catch_all)))
        return None

    def _remember(self, name: str, route: Route) -> Route:
        if len(self._built) >= _BUILT_LIMIT:  # client-chosen names: keep the cache bounded
            self._built.clear()
        self._built[name] = route
        return route
