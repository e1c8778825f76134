"""Exact rate, latency and receptive field of a streamed graph, read off its nodes' time rules.

Every streamed node states its time behaviour once, as a :class:`~torchstreamer.graph.handlers.
TimeRule`: its rate, how many outputs it returns once its inputs have returned so many samples,
and which input samples an output reads. Composing the rules along the graph gives, without
streaming anything:

- ``rate``: the product of the rates along the graph (a ``Fraction``, exact for any stride);
- when each output leaves: the count of every node after ``n`` input samples, for every ``n`` up
  to a horizon, computed at once as integer tensors. The counts are periodic once the model is
  warmed up (each period of ``P`` input samples, ``P`` the least common multiple of the rates'
  denominators, adds ``rate * P`` outputs), and the horizon is extended until they are, so the
  latency read from them holds for every output of any signal;
- the receptive field: for every output, the first and last input sample it depends on, composed
  through the reads of every node, over one whole period in the middle of the horizon.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 512, stride=512)).eval()
    >>> stream = pts.stream(model, torch.randn(1, 1, 2048))
    >>> stream.rate, stream.latency, stream.receptive_field
    (Fraction(1, 512), 511, 512)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from torchstreamer.plan.rules import promised_ready

if TYPE_CHECKING:
    from torchstreamer.graph.stream import GraphStream
    from torchstreamer.plan.rules import TimeRule

__all__ = ["Schedule", "Timing", "chain_timing", "graph_timing"]

_LONGEST = 1 << 18  # input samples of the longest horizon: a period this long is refused
_FAR = 1 << 62  # the first/last sample of an output that reads no input


class Timing:
    """The time figures of every streamed node of a graph stream, by node name.

    Attributes:
        rates: output samples per input sample of each node (the input's is 1).
        period: input samples after which, once warmed up, every node has returned a whole
            number of new samples.
        counts: for each node, the samples it has returned after ``n = 1, 2, ...`` input samples
            (an int64 tensor; index ``n - 1``), while the signal goes on.
        unbounded: nodes whose outputs depend on every earlier input (after a recurrent layer or
            a running sum).
    """

    def __init__(
        self, rules: dict[str, TimeRule], inputs: dict[str, list[str]], source: str = "input"
    ) -> None:
        """``rules`` of the streamed nodes in an order where inputs come first, the names of
        each node's time inputs, and the name of the model's input (``source``)."""
        self.nodes = list(rules)
        self.rules = rules
        self.inputs = inputs
        sources = {i for names in inputs.values() for i in names} - set(rules)
        if not sources <= {source}:
            raise ValueError(f"the streamed nodes must read only {source!r}, not {sorted(sources)}")
        self._input = source
        self.rates: dict[str, Fraction] = {self._input: Fraction(1)}
        for name in self.nodes:
            self.rates[name] = self.rules[name].rate * self.rates[self.inputs[name][0]]
        self.period = 1
        for rate in self.rates.values():
            self.period = math.lcm(self.period, rate.denominator)
        self.counts = self._settled_counts()
        self.unbounded: set[str] = set()
        for name in self.nodes:
            if self.rules[name].reads is None or any(
                i in self.unbounded for i in self.inputs[name]
            ):
                self.unbounded.add(name)
        self._fields: Optional[dict[str, Optional[int]]] = None

    # -- counts -------------------------------------------------------------------------

    def _counts(self, horizon: int) -> dict[str, Tensor]:
        counts = {self._input: torch.arange(1, horizon + 1, dtype=torch.int64)}
        promised = dict(counts)  # the samples each node is guaranteed to reach (rules.py)
        for name in self.nodes:
            ready, total = promised_ready(
                self.rules[name],
                [counts[i] for i in self.inputs[name]],
                [promised[i] for i in self.inputs[name]],
            )
            counts[name] = torch.as_tensor(ready, dtype=torch.int64).expand(horizon).clone()
            promised[name] = torch.as_tensor(total, dtype=torch.int64).expand(horizon)
        return counts

    def _settled(self, counts: dict[str, Tensor], horizon: int) -> bool:
        """Whether every node's counts repeat with the period over the last two periods."""
        p = self.period
        if horizon < 3 * p:
            return False
        for name, values in counts.items():
            step = self.rates[name] * p
            if step.denominator != 1:
                return False
            recent = values[horizon - 2 * p :]
            if not bool((recent[p:] - recent[:p] == int(step)).all()):
                return False
        return True

    def _settled_counts(self) -> dict[str, Tensor]:
        horizon = 3 * self.period + 256
        while True:
            counts = self._counts(horizon)
            if self._settled(counts, horizon):
                return counts
            if horizon >= _LONGEST:
                raise ValueError(
                    f"the streamed graph does not settle into a period of {self.period} input "
                    f"samples within {_LONGEST} samples"
                )
            horizon *= 2

    def count_at(self, name: str, n: int) -> int:
        """The samples node ``name`` has returned after ``n`` input samples, for any ``n`` (the
        counts repeat with the period past the horizon)."""
        counts = self.counts[name]
        horizon = counts.numel()
        if n <= 0:
            return 0
        if n <= horizon:
            return int(counts[n - 1])
        periods = (n - horizon) // self.period + 1
        step = self.rates[name] * self.period
        return int(counts[n - periods * self.period - 1]) + periods * int(step)

    # -- figures --------------------------------------------------------------------------

    def arrivals(self, name: str) -> Tensor:
        """For each output of node ``name`` in the horizon, the number of input samples after
        which the stream has returned it (int64 tensor)."""
        counts = self.counts[name]
        outputs = torch.arange(int(counts[-1]), dtype=torch.int64)
        return torch.searchsorted(counts, outputs, right=True) + 1

    def latency(self, name: str) -> int:
        """Input samples of lookahead at node ``name``: the most samples past an output's own
        position (output ``j`` sits at input ``floor(j / rate)``) that the stream waits for
        before returning it."""
        arrived = self.arrivals(name)
        if arrived.numel() == 0:
            return 0
        rate = self.rates[name]
        j = torch.arange(arrived.numel(), dtype=torch.int64)
        position = j * rate.denominator // rate.numerator
        return max(0, int((arrived - 1 - position).max()))

    def receptive_field(self, name: str) -> Optional[int]:
        """Input samples that one output of node ``name`` depends on, from its first to its
        last (the most over a period of outputs in steady state); ``None`` when unbounded."""
        if self._fields is None:
            self._fields = self._receptive_fields()
        return self._fields[name]

    def _receptive_fields(self) -> dict[str, Optional[int]]:
        """The widest span of every node's outputs over its last period of outputs, on a
        horizon long enough that none of those outputs reads the start of the signal (where
        padding would cut the span short)."""
        counts, horizon = self.counts, int(self.counts[self._input][-1])
        while True:
            fields, clipped = self._spans(counts)
            if not clipped or horizon >= _LONGEST:
                return fields
            horizon *= 2
            counts = self._counts(horizon)

    def _spans(self, counts: dict[str, Tensor]) -> tuple[dict[str, Optional[int]], bool]:
        """First and last input sample of every output of every node, composed through the
        nodes' reads; then the widest span over each node's last period of outputs, and whether
        any of those reached back to the start of the signal."""
        horizon = int(counts[self._input][-1])
        first: dict[str, Tensor] = {self._input: torch.arange(horizon, dtype=torch.int64)}
        last: dict[str, Tensor] = {self._input: first[self._input]}
        fields: dict[str, Optional[int]] = {}
        clipped = False
        for name in self.nodes:
            total = int(counts[name][-1])
            reads = self.rules[name].reads
            if name in self.unbounded or reads is None:
                fields[name] = None
                first[name] = torch.zeros(total, dtype=torch.int64)
                last[name] = torch.zeros(total, dtype=torch.int64)
                continue
            j = torch.arange(total, dtype=torch.int64)
            low, high = (torch.as_tensor(v, dtype=torch.int64).expand(total) for v in reads(j))
            reached = low <= high  # outputs that no input reaches (gaps) read nothing
            lo = torch.full((total,), _FAR, dtype=torch.int64)
            hi = torch.full((total,), -_FAR, dtype=torch.int64)
            for source in self.inputs[name]:
                size = first[source].numel()
                if size == 0:
                    continue
                lo = torch.minimum(lo, first[source][low.clamp(0, size - 1)])
                hi = torch.maximum(hi, last[source][high.clamp(0, size - 1)])
            first[name] = torch.where(reached, lo, _FAR)
            last[name] = torch.where(reached, hi, -_FAR)
            per_period = max(1, int(self.rates[name] * self.period))
            start = max(0, total - per_period)
            head, tail = first[name][start:], last[name][start:]
            valid = tail >= head
            fields[name] = int((tail - head + 1)[valid].max()) if bool(valid.any()) else 0
            clipped = clipped or total == 0 or bool((head[valid] <= 0).any())
        return fields, clipped


def graph_timing(stream: GraphStream) -> Timing:
    """The timing of a graph stream: its streamed nodes, each with its handler's rule."""
    names = [n.name for n in stream._graph.nodes if n.name in stream.handlers]
    timed = set(names) | {stream._input.name}
    return Timing(
        {name: stream.handlers[name].rule() for name in names},  # type: ignore[operator]
        {
            n.name: [i.name for i in n.all_input_nodes if i.name in timed]
            for n in stream._graph.nodes
            if n.name in stream.handlers
        },
        stream._input.name,
    )


def carried_timing(stream: GraphStream) -> Timing:
    """The timing of a graph stream in which every recurrent layer (and running sum) reads its
    input step by step: what a stream that carries those layers' states, rather than recomputing
    them, needs of the input (bounded receptive fields where the plain timing has none)."""
    from torchstreamer.plan.rules import TimeRule as Rule
    from torchstreamer.plan.rules import same_step

    timing = stream.timing
    rules = {
        name: rule if rule.reads is not None else Rule(rule.rate, rule.ready, same_step)
        for name, rule in timing.rules.items()
    }
    return Timing(rules, timing.inputs, timing._input)


def chain_timing(rules: list[TimeRule]) -> Timing:
    """The timing of layers one after the other (an ``nn.Sequential``'s streams)."""
    names = [f"{index}" for index in range(len(rules))]
    inputs = {name: ["input" if i == 0 else names[i - 1]] for i, name in enumerate(names)}
    return Timing(dict(zip(names, rules)), inputs)


class Schedule:
    """When a stream has something to return, from the plan's counts of its outputs: a stream
    asks :meth:`next_return` and, until a block reaches it, only keeps the block's samples (no
    layer runs for a call that returns nothing; the layers then take the kept samples and the
    block together, which gives the same outputs, as streams do not depend on how a signal is
    cut into blocks).

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 4, stride=4)).eval()
        >>> schedule = Schedule(pts.stream(model, torch.randn(1, 1, 64)).timing)
        >>> [schedule.next_return(seen) for seen in range(9)], schedule.longest_wait
        ([4, 4, 4, 4, 8, 8, 8, 8, 12], 3)
    """

    def __init__(self, timing: Timing, outputs: Optional[list[str]] = None) -> None:
        names = outputs if outputs is not None else [timing.nodes[-1]]
        counts = torch.stack([timing.counts[name] for name in names])
        previous = torch.cat([torch.zeros_like(counts[:, :1]), counts[:, :-1]], 1)
        returns = (counts > previous).any(0)  # index n - 1: the n-th sample returns something
        horizon, period = returns.numel(), timing.period
        samples = torch.arange(1, horizon + 1, dtype=torch.int64)
        marked = torch.where(returns, samples, torch.iinfo(torch.int64).max)
        # the first return at or after each sample: a running minimum from the end
        following = marked.flip(0).cummin(0).values.flip(0)
        self.period = period
        self.settled = horizon - 2 * period  # counts repeat from here on
        self.table: list[int] = following[: horizon - period].tolist()  # seen = 0, 1, ...
        self.longest_wait = max(n - seen - 1 for seen, n in enumerate(self.table))

    def next_return(self, seen: int) -> int:
        """The number of input samples at which the stream next returns something, once
        ``seen`` samples have come."""
        if seen < len(self.table):
            return self.table[seen]
        periods = (seen - self.settled) // self.period
        return self.table[seen - periods * self.period] + periods * self.period
