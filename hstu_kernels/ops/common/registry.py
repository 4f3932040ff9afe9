"""One backend registry for every op: each backend says, for given inputs, why it cannot take them.

An op builds a ``BackendRegistry`` from its backends, fastest first, with the reference (``"torch"``, always
able) last. ``choose("auto", ...)`` takes the first fast backend with no reasons on CUDA tensors and the reference
otherwise; an explicit backend that cannot take the inputs, or ``fastest`` when no fast backend can, raises a
``ValueError`` that lists every backend's reasons. The reasons functions take the op's inputs as given to
``reasons`` (the first is q, whose device decides what ``auto`` prefers).
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence


class Backend(NamedTuple):
    name: str
    reasons: Callable[..., List[str]]  # the reasons it cannot take the inputs (empty: it can)
    impl: Optional[Callable]  # None while the backend does not exist on this install
    fast: bool = True  # a fused kernel: "auto" prefers it on CUDA tensors


def unavailable(why: str) -> Callable[..., List[str]]:
    """A reasons function for a backend missing on this install: ``why`` for every input."""
    return lambda *args, **kwargs: [why]


class BackendRegistry:
    def __init__(self, op: str, backends: Sequence[Backend]):
        self.op = op
        self._backends = {b.name: b for b in backends}
        self.fast = tuple(b.name for b in backends if b.fast)
        self.reference = next(b.name for b in backends if not b.fast)

    @property
    def names(self) -> tuple:
        """Every value ``backend=`` takes: "auto" and the backends."""
        return ("auto", *self._backends)

    def check_name(self, backend: str) -> None:
        if backend not in self.names:
            raise ValueError(f"{self.op}: backend must be one of {', '.join(self.names)}; got {backend!r}")

    def reasons(self, *args, **kwargs) -> Dict[str, List[str]]:
        """For each backend, the reasons it cannot take these inputs (empty: it can)."""
        return {name: b.reasons(*args, **kwargs) for name, b in self._backends.items()}

    @staticmethod
    def format(reasons: Dict[str, List[str]]) -> str:
        return "; ".join(f"{name}: {', '.join(r) if r else 'available'}" for name, r in reasons.items())

    def impl(self, name: str) -> Callable:
        return self._backends[name].impl

    def choose(self, backend: str, *args, **kwargs) -> str:
        """Resolve ``backend`` ("auto" or a name) to a backend that can take the inputs, or raise a ValueError."""
        self.check_name(backend)
        reasons = self.reasons(*args, **kwargs)
        if backend == "auto":
            if args[0].is_cuda:
                for name in self.fast:
                    if not reasons[name]:
                        return name
            return self.reference
        if reasons[backend]:
            ok = [name for name, r in reasons.items() if not r]
            raise ValueError(
                f"{self.op}: backend {backend!r} cannot take these inputs ({', '.join(reasons[backend])}); "
                f"available: {', '.join(ok)}. All backends: {self.format(reasons)}"
            )
        return backend

    def fastest(self, *args, **kwargs) -> str:
        """The fastest fast backend that can take the inputs (fused blocks), or a ValueError with every reason."""
        reasons = self.reasons(*args, **kwargs)
        for name in self.fast:
            if not reasons[name]:
                return name
        raise ValueError(f"{self.op}: no fused backend can take these inputs: {self.format(reasons)}")

    def available(self, probes, *, cuda: bool) -> Dict[str, List[str]]:
        """For each fast backend, the reasons it can take no input at all on this machine (empty: it may).

        ``probes``: argument tuples of small CPU inputs; a backend's answer is its shortest list over them. With
        ``cuda`` (a CUDA device is present) a backend that only objects to CPU tensors may still serve CUDA
        tensors."""
        out = {}
        for name in self.fast:
            found = [self._backends[name].reasons(*probe) for probe in probes]
            if cuda:
                found = [[r for r in reasons if "CUDA tensors" not in r] for reasons in found]
            out[name] = min(found, key=len)
        return out
