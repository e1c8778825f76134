"""Streams of containers: ``nn.Sequential`` and ``Residual1d``."""

import copy
import threading
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream, check_block, check_state_values, state_int
from torchstreamer.errors import NotStreamableError, StreamError, StreamInputError
from torchstreamer.streams.conv import check_padding_choice
from torchstreamer.streams.elementwise import Elementwise1dStream, elementwise_verdict
from torchstreamer.streams.leaf import check_signal_state, fit_buffer, layer_label
from torchstreamer.time import residual_crop

__all__ = ["Residual1d", "Residual1dStream", "Sequential1dStream"]


class _Depth(threading.local):
    """A count kept per thread (another thread's build is no layer of this one's)."""

    value = 0


# above 0 while a container builds the streams of its layers: a nested container is a layer of
# one that runs on the engine (or on its layers), so it builds no engine of its own
_BUILDING_LAYERS = _Depth()
_ENGINE_COUNTERS = ("_rank", "_batch", "_seen")  # a container's own state on the engine


class Residual1d(nn.Module):
    """A residual connection that works with unpadded layers: ``net(x) + crop(x)``.

    When ``net`` shortens the signal by ``trim`` samples (unpadded convolutions), the residual
    is cropped to the same length, centred: ``trim // 2`` samples on the left, the rest on the
    right (:func:`torchstreamer.time.residual_crop`). It is an ordinary module, usable offline;
    ``Residual1dStream`` streams it.

    Args:
        *modules: the inner network, one module or several (wrapped in ``nn.Sequential``).

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> block = pts.Residual1d(torch.nn.Conv1d(4, 4, 3))
        >>> block(torch.randn(1, 4, 10)).shape
        torch.Size([1, 4, 8])
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        if not modules:
            raise TypeError("Residual1d needs at least one module.")
        self.net = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        left, right = residual_crop(x.shape[-1] - y.shape[-1])
        return y + x[..., left : x.shape[-1] - right]


def _input_channels(module: nn.Module) -> Optional[int]:
    """Channels a module takes, when its first channel-aware layer tells."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        return int(module.in_channels)
    if isinstance(module, nn.BatchNorm1d):
        return int(module.num_features)
    if isinstance(module, nn.PReLU) and module.num_parameters > 1:
        return int(module.num_parameters)
    if isinstance(module, nn.Sequential):
        for layer in module:
            channels = _input_channels(layer)
            if channels is not None:
                return channels
            if not _keeps_channels(layer):
                return None
        return None
    if isinstance(module, Residual1d):
        return _input_channels(module.net)
    return None


def _keeps_channels(module: nn.Module) -> bool:
    """Whether a module is known to give as many channels as it takes."""
    if isinstance(module, _CHANNEL_KEEPING):
        return True
    if isinstance(module, (nn.GLU, nn.BatchNorm1d, nn.PReLU)):
        return False  # GLU halves the channels; the others tell their own
    try:
        return bool(elementwise_verdict(module, ""))
    except NotStreamableError:
        return False


_CHANNEL_KEEPING: tuple[type, ...] = (
    nn.Identity, nn.AvgPool1d, nn.MaxPool1d, nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d,
    nn.ReplicationPad1d, nn.BatchNorm1d, nn.Dropout, nn.ReLU, nn.GELU, nn.LeakyReLU, nn.Tanh,
    nn.Sigmoid, nn.SiLU, nn.ELU, nn.PReLU, Residual1d,
)  # fmt: skip


def _output_channels(module: nn.Module, channels: Optional[int]) -> Optional[int]:
    """Channels a module gives for ``channels`` input channels, or ``None`` if unknown."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        return int(module.out_channels)
    if isinstance(module, nn.Sequential):
        for layer in module:
            channels = _output_channels(layer, channels)
        return channels
    if channels is None:
        return None
    if _keeps_channels(module):
        return channels
    try:  # any other module: ask it
        reference = next(iter(module.parameters()), None)
        probe = torch.zeros(1, channels, 64)
        if reference is not None:
            probe = probe.to(dtype=reference.dtype, device=reference.device)
        with torch.no_grad():
            y = module(probe)
        return int(y.shape[1]) if isinstance(y, Tensor) and y.dim() == 3 else None
    except Exception:
        return None


class Sequential1dStream(BaseStream):
    """Streams an ``nn.Sequential`` layer by layer; each layer's outputs feed the next.

    Every layer gets its stream from :func:`torchstreamer.create_stream` (registered
    streamers first), with the same ``padding`` choice.

    Args:
        net: the network.
        padding: ``"valid"`` (default, as in the seed API) or ``"model"``; see
            :class:`Conv1dStream`.
        path: the network's path in a larger model, used in error messages.
        in_channels: channels of the input, when the first layers do not tell.
        engine: run on the generated frame code of the network (see :attr:`engine`) when it
            reproduces it, as :func:`torchstreamer.stream` does; ``False`` keeps one stream per
            layer (the form that ``torch.jit.script`` compiles).

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 1, 2, stride=2))
        >>> stream = pts.Sequential1dStream(net)
        >>> x = torch.randn(1, 50)
        >>> blocks = [stream(x[:, i : i + 8]) for i in range(0, 50, 8)]
        >>> y = torch.cat([b for b in blocks if b is not None], -1)
        >>> torch.allclose(y, net(x), atol=1e-6)
        True
    """

    _state_tensors = ("_pending",)
    _state_ints = ("_rank", "_batch", "_seen", "_stage_channels", "_waiting")
    __jit_unused_properties__: ClassVar[list[str]] = ["engine"]
    _pending: Tensor
    _gate_next: list[int]
    _stage_early: list[bool]

    def __init__(
        self,
        net: nn.Sequential,
        padding: str = "valid",
        *,
        path: str = "",
        in_channels: Optional[int] = None,
        engine: bool = True,
    ) -> None:
        super().__init__()
        from torchstreamer.streams.registry import create_stream

        if not isinstance(net, nn.Sequential):
            raise TypeError(
                f"Sequential1dStream streams an nn.Sequential, not {type(net).__name__}; use "
                "torchstreamer.create_stream for a single layer."
            )
        check_padding_choice(padding)
        self.padding = padding
        self._label = layer_label(net, path)
        channels = in_channels if in_channels is not None else _input_channels(net)
        self._in_channels = -1 if channels is None else channels
        streams: list[BaseStream] = []
        _BUILDING_LAYERS.value += 1
        try:
            for name, layer in net.named_children():
                layer_path = f"{path}.{name}" if path else name
                streams.append(create_stream(layer, padding, in_channels=channels, path=layer_path))
                channels = _output_channels(layer, channels)
        finally:
            _BUILDING_LAYERS.value -= 1
        self.streams = nn.ModuleList(streams)
        # an unbatched block would turn a softmax over dim=1 into one over time
        self._batched_only = any(
            isinstance(s, Elementwise1dStream) and s._batched_only for s in self.streams.modules()
        )
        self._rank = 0
        self._batch = -1
        self._seen = 0  # samples that the stages have taken
        # input channels of each stage in this signal; -1 while the stage has had no block
        self._stage_channels = [-1] * len(streams)
        # stages that can return outputs on a promise alone (rules.TimeRule), without a block
        self._stage_early = [_emits_on_promise(s) for s in streams]
        self._promised = 0  # input samples the signal is guaranteed to reach (promise)
        # a call that completes no output only keeps its samples (in _pending, _waiting of
        # them), from the layers' time rules: when the next output comes (plan.Schedule)
        self._gate_next, self._gate_settled, self._gate_period, self._gate_wait = _gate(self)
        self.register_buffer("_pending", torch.zeros(0), persistent=False)
        self._waiting = 0
        # the generated frame code of the offline module this stream equals (streams.on_engine)
        self._on_engine = False
        # on the engine: (shape before time, dtype, device, rank, batch) of the last block of
        # the signal in progress, which passed the full check (so a block like it, in the same
        # signal, fits); cleared by reset, set_state, a move (.to) and pickling
        self._like_last: Any = None
        if engine and _BUILDING_LAYERS.value == 0:
            self._attach_engine()

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        if self._on_engine and not torch.jit.is_scripting():
            return self._engine_forward(x, final)
        self._check(x, final)
        total = self._seen + self._waiting
        promised = max(self._promised, total + x.shape[-1])
        if self._gate_period > 0 and self._rank == 0:  # a new signal: size the kept samples
            xb = x if x.dim() == 3 else x.unsqueeze(0)
            self._pending = fit_buffer(self._pending, xb, xb.shape[1], self._gate_wait)
        # (the schedule counts this container's own samples: a promise from outside, which a
        # nested container gets, may complete more, so then every call runs the layers)
        gated = not final and self._gate_period > 0 and promised == total + x.shape[-1]
        if gated and total + x.shape[-1] < self._next_return(total):
            self._keep(x)
            return None
        if self._waiting > 0:
            held = self._pending[:, :, : self._waiting]
            x = torch.cat([held if x.dim() == 3 else held.squeeze(0), x], -1)
            self._waiting = 0
        y: Optional[Tensor] = x
        # TorchScript unrolls this loop, so it cannot `break`: stages after one that gave
        # nothing are skipped, except that final=True still flushes those that saw blocks, and
        # a stage that returns outputs once more input is guaranteed (promise) is asked
        for i, stream in enumerate(self.streams):
            promised = stream.promise(promised)  # type: ignore[operator]
            if y is not None:
                self._stage_channels[i] = y.shape[-2]
                y = stream(y, final)
                if y is not None and y.shape[-1] == 0:  # (a registered stream may return one)
                    y = None
            elif (final or self._stage_early[i]) and self._stage_channels[i] >= 0:
                channels = self._stage_channels[i]
                empty = (
                    x.new_zeros(x.shape[0], channels, 0)
                    if x.dim() == 3
                    else x.new_zeros(channels, 0)
                )
                y = stream(empty, final)
                if y is not None and y.shape[-1] == 0:
                    y = None
            elif final:  # this stage saw no block in this signal: nothing to flush
                stream.reset()  # type: ignore[operator]
        if final:
            self.reset()
        else:  # recorded only once every stage has taken the block
            self._rank = x.dim()
            self._batch = x.shape[0] if x.dim() == 3 else -1
            self._seen += x.shape[-1]
        if y is not None and y.shape[-1] == 0:  # no stages: the block itself
            return None
        return y

    @torch.jit.unused
    def _attach_engine(self) -> None:
        """Run on the frame engine when it reproduces this stream (see ``streams.on_engine``)."""
        from torchstreamer.streams.on_engine import engine_for

        engine = engine_for(self, self._in_channels)
        if engine is not None:
            self._engine = engine
            self._on_engine = True

    @property
    def engine(self) -> str:
        """What runs this stream: ``"frames of N samples"`` (the generated frame code of the
        network, see :func:`torchstreamer.stream`) or ``"layers"`` (one stream per layer: a
        model the engine does not run, a nested container, and the scripted form)."""
        return self._engine.engine if self._on_engine else "layers"

    def _check(self, x: Tensor, final: bool) -> None:
        """Raise :class:`StreamInputError` before any state changes unless ``x`` fits."""
        check_block(self._label, x, self._in_channels, self._reference(), self._rank, self._batch)
        if self._batched_only and x.dim() == 2:
            raise StreamInputError(
                f"{self._label} contains a softmax over dim=1, which is time for an unbatched "
                "[C, T] block; stream [B, C, T] blocks or use dim=-2."
            )
        if final and not torch.jit.is_scripting():
            self._check_end(self._seen + self._waiting + x.shape[-1])

    @torch.jit.unused
    def _engine_forward(self, x: Tensor, final: bool) -> Optional[Tensor]:
        own = self.__dict__  # (hot path: no nn.Module attribute lookups)
        like = own["_like_last"]
        batched = x.dim() == 3
        graph: Any = self._modules["_engine"]
        if (
            like is not None
            and not final
            and x.shape[:-1] == like[0]
            and x.dtype == like[1]
            and x.device == like[2]
            and own["_rank"] == like[3]
            and own["_batch"] == like[4]
        ):  # like the last block of the signal in progress, which passed the check: fits
            y = graph._modules["_engine"].run(x if batched else x.unsqueeze(0), False, graph)
            own["_seen"] += x.shape[-1]
            if y is None:
                return None
            return y if batched else y.squeeze(0)
        self._check(x, final)  # a signal's first block, another shape, or its end: in full
        # the block is checked: the graph stream's own check would repeat it
        engine: Any = graph._modules.get("_engine")
        xb = x if batched else x.unsqueeze(0)
        if engine is not None and graph._batch >= 0 and not final:  # (GraphStream.forward)
            y = engine.run(xb, False, graph)
        else:
            try:
                y = graph._engine_forward(xb, final)
            except StreamError:  # (the model cannot end the signal: the engine is reset)
                if final:
                    self.reset()
                raise
        assert not isinstance(y, tuple)  # a Sequential returns one tensor
        if final:
            self.reset()
        else:
            self._rank = x.dim()
            self._batch = x.shape[0] if batched else -1
            self._seen += x.shape[-1]
            if graph._modules.get("_engine") is not None and graph._batch >= 0:
                own["_like_last"] = (x.shape[:-1], x.dtype, x.device, self._rank, self._batch)
        if y is None:
            return None
        return y if batched else y.squeeze(0)

    @torch.jit.unused
    def get_state(self) -> dict[str, Tensor]:
        """See :meth:`BaseStream.get_state`; on the engine, this stream's signal counters and
        the engine's state under ``_engine.`` (the layers stay idle)."""
        if not self._on_engine:
            return super().get_state()
        state = {name: torch.tensor(getattr(self, name)) for name in _ENGINE_COUNTERS}
        state.update({f"_engine.{k}": v for k, v in self._engine.get_state().items()})
        return state

    @torch.jit.unused
    def set_state(self, state: dict[str, Tensor]) -> None:
        """See :meth:`BaseStream.set_state`: nothing changes when the state does not fit."""
        check_state_values(state)
        if not self._on_engine:
            super().set_state(state)
            return
        own = {k: v for k, v in state.items() if not k.startswith("_engine.")}
        if set(own) != set(_ENGINE_COUNTERS):
            raise StreamError(
                f"The state does not fit {self._label}: missing "
                f"{sorted(set(_ENGINE_COUNTERS) - set(own))}, unexpected "
                f"{sorted(set(own) - set(_ENGINE_COUNTERS))}."
            )
        for key, value in own.items():
            if value.dim() != 0 or value.dtype != torch.int64:
                raise StreamError(
                    f"State '{key}' is a counter and must be a 0-d int64 tensor but is a "
                    f"{value.dtype} tensor shaped {list(value.shape)}."
                )
        rank, batch, seen = (state_int(own, n) for n in _ENGINE_COUNTERS)
        rows = state.get("_engine._batch")
        wanted = {0: -1, 2: 1, 3: batch}.get(rank)
        if (
            rank not in (0, 2, 3)
            or seen < 0
            or (rank == 0) != (seen == 0 and batch == -1)
            or (rank == 2 and batch != -1)
            or (rows is not None and int(rows.item()) != wanted)
        ):
            raise StreamError(
                f"The state does not fit {self._label}: '_rank' {rank}, '_batch' {batch} and "
                f"'_seen' {seen} are not the counters of a signal (of the engine's "
                f"'_engine._batch' rows); restore a state that get_state() returned for a "
                "stream of the same model."
            )
        self._engine.set_state({k[len("_engine.") :]: v for k, v in state.items() if k not in own})
        self._rank, self._batch, self._seen = rank, batch, seen
        self._like_last = None  # (the next block is checked in full against the new counters)

    def __prepare_scriptable__(self) -> "Sequential1dStream":
        """The form that ``torch.jit.script`` compiles: this stream on its layers (generated
        frame code is Python, not TorchScript). The original keeps its engine."""
        if not self._on_engine:
            return self
        twin = copy.copy(self)
        twin.__dict__["_modules"] = {k: v for k, v in self._modules.items() if k != "_engine"}
        twin.__dict__["_on_engine"] = False
        return twin

    def _next_return(self, seen: int) -> int:
        """The number of input samples at which the next output comes, once ``seen`` have."""
        if seen < len(self._gate_next):
            return self._gate_next[seen]
        periods = (seen - self._gate_settled) // self._gate_period
        return self._gate_next[seen - periods * self._gate_period] + periods * self._gate_period

    def _keep(self, x: Tensor) -> None:
        """Keep a block that completes no output for the next call that does."""
        xb = x if x.dim() == 3 else x.unsqueeze(0)
        if self._waiting == 0:
            self._pending = fit_buffer(self._pending, xb, xb.shape[1], self._gate_wait)
        length = xb.shape[-1]
        self._pending[:, :, self._waiting : self._waiting + length].copy_(xb.detach())
        self._waiting += length
        self._rank = x.dim()
        self._batch = x.shape[0] if x.dim() == 3 else -1

    @torch.jit.unused
    def _check_state(self, state: dict[str, Tensor]) -> None:
        """The signal counters, and every stage's position in the signal against them."""
        self._check_waiting(state)
        rank, batch, seen = (state_int(state, n) for n in ("_rank", "_batch", "_seen"))
        stages = state["_stage_channels"].tolist()

        def refuse(found: str) -> StreamError:
            return StreamError(
                f"The state does not fit {self._label}: {found}; restore a state that "
                "get_state() returned for a stream of the same model."
            )

        if rank not in (0, 2, 3):
            raise refuse(
                f"'_rank' is {rank} but must be 0 (no signal), 2 or 3 (the dims of blocks)"
            )
        if rank == 0 and (batch != -1 or seen != 0 or any(c != -1 for c in stages)):
            raise refuse(
                f"no signal is in progress ('_rank' is 0) but '_batch' is {batch}, '_seen' is "
                f"{seen} and '_stage_channels' is {stages} instead of -1, 0 and all -1"
            )
        if rank == 2 and batch != -1:
            raise refuse(f"'_batch' is {batch} but a signal of [C, T] blocks has batch -1")
        if rank == 3 and batch < 0:
            raise refuse(f"'_batch' is {batch} but a batch size is at least 0")
        if seen < 0:
            raise refuse(f"'_seen' is {seen} but a number of samples is at least 0")
        if self._on_engine:  # the layers stay idle: the engine's own state is checked
            return
        if rank != 0 and stages and stages[0] < 0 and seen > 0:
            raise refuse(f"'_stage_channels' is {stages} but the first stage has had blocks")
        if rank != 0 and stages and stages[0] >= 0 and 0 <= self._in_channels != stages[0]:
            raise refuse(
                f"'_stage_channels' is {stages} but the input has {self._in_channels} channels"
            )
        for i, channels in enumerate(stages):
            if channels < -1 or (i > 0 and stages[i - 1] < 0 <= channels):
                raise refuse(
                    f"'_stage_channels' is {stages} but a stage has had blocks only if the one "
                    "before it had (and -1 marks one that had none)"
                )
            child_rank = state.get(f"streams.{i}._rank")
            if child_rank is not None:
                wanted = rank if channels >= 0 else 0
                if int(child_rank.item()) != wanted:
                    raise refuse(
                        f"'streams.{i}._rank' is {int(child_rank.item())} but must be {wanted} "
                        f"(the stage has {'had' if channels >= 0 else 'had no'} blocks of "
                        "this signal)"
                    )
            child_batch = state.get(f"streams.{i}._batch")
            if (
                child_batch is not None
                and channels >= 0
                and rank == 3
                and int(child_batch.item()) != batch
            ):
                raise refuse(
                    f"'streams.{i}._batch' is {int(child_batch.item())} but the signal has "
                    f"batch {batch}"
                )
            child_channels = state.get(f"streams.{i}._channels")
            if (
                child_channels is not None
                and channels >= 0
                and int(child_channels.item()) != channels
            ):
                raise refuse(
                    f"'streams.{i}._channels' is {int(child_channels.item())} but "
                    f"'_stage_channels' gives that stage {channels} channels"
                )
        first_seen = state.get("streams.0._seen")
        if first_seen is not None and int(first_seen.item()) != seen:
            raise refuse(
                f"'_seen' is {seen} but its first stage has seen {int(first_seen.item())} samples"
            )

    @torch.jit.unused
    def _check_waiting(self, state: dict[str, Tensor]) -> None:
        """The samples kept for the next call that returns something: at most the longest
        wait, with the signal's batch and channels."""
        waiting, rank = state_int(state, "_waiting"), state_int(state, "_rank")
        pending = state["_pending"]
        found = ""
        if not 0 <= waiting <= self._gate_wait:
            found = f"'_waiting' is {waiting} but is between 0 and {self._gate_wait}"
        elif waiting and rank == 0:
            found = f"'_waiting' is {waiting} but no signal is in progress"
        elif waiting and (pending.dim() != 3 or pending.shape[-1] != self._gate_wait):
            found = (
                f"'_pending' has shape {list(pending.shape)} but holds [B, C, {self._gate_wait}]"
            )
        elif waiting and rank == 3 and pending.shape[0] != state_int(state, "_batch"):
            found = f"'_pending' has batch {pending.shape[0]} but the signal another"
        elif waiting and rank == 2 and pending.shape[0] != 1:
            found = f"'_pending' has batch {pending.shape[0]} but a [C, T] signal has 1"
        elif waiting and 0 <= self._in_channels != pending.shape[1]:
            found = f"'_pending' has {pending.shape[1]} channels but the input {self._in_channels}"
        if found:
            raise StreamError(
                f"The state does not fit {self._label}: {found}; restore a state that "
                "get_state() returned for a stream of the same model."
            )

    @torch.jit.export
    def promise(self, n: int) -> int:
        """Pass the promise on through the layers (see :meth:`BaseStream.promise`)."""
        self._promised = n
        for stream in self.streams:
            n = stream.promise(n)  # type: ignore[operator]
        return n

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress in every layer."""
        self._rank = 0
        self._batch = -1
        self._seen = 0
        self._waiting = 0
        self._promised = 0
        for i, stream in enumerate(self.streams):
            stream.reset()  # type: ignore[operator]
            self._stage_channels[i] = -1
        if self._on_engine and not torch.jit.is_scripting():
            self._reset_engine()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_like_last"] = None  # (a copy checks its first block in full)
        return state

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "Sequential1dStream":
        self.__dict__["_like_last"] = None  # blocks must now fit the new dtype or device
        return super()._apply(fn, *args, **kwargs)

    @torch.jit.unused
    def _reset_engine(self) -> None:
        self._engine.reset()
        self._like_last = None

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        for stream in self.streams:
            reference = stream._reference()  # type: ignore[operator]
            if reference is not None:
                return reference
        return None

    @torch.jit.unused
    def _check_end(self, total: int) -> None:
        """Ask every stage whether the signal can end, before any stage changes state."""
        for stream in self.streams:
            stream._check_end(total)  # type: ignore[operator]
            try:
                total = stream.output_length(total)  # type: ignore[operator]
            except NotImplementedError:  # a registered stream that does not tell
                return

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        for stream in self.streams:
            n = stream.output_length(n)  # type: ignore[operator]
        return n


def _emits_on_promise(stream: nn.Module) -> bool:
    """Whether a stage can return outputs on a promise alone: a transposed convolution whose
    last outputs exist only if more input comes (a stride longer than what the kernel and the
    output padding cover past the crop), or a container of one."""
    from torchstreamer.streams.conv import ConvTranspose1dStream

    if isinstance(stream, ConvTranspose1dStream):
        return stream._span + stream._extra - stream._crop < stream._stride
    if isinstance(stream, Sequential1dStream):
        return any(stream._stage_early)
    return False


def _gate(stream: Sequential1dStream) -> tuple[list[int], int, int, int]:
    """The schedule of a sequential stream's outputs as plain numbers (TorchScript reads them):
    the next return for each number of samples seen in the table, where the table repeats
    from, its period, and the most samples that wait. All 0 when a layer's rule is unknown (a
    registered stream without ``output_length``): every call then runs the layers."""
    from torchstreamer.plan.rules import stream_rule
    from torchstreamer.plan.timing import Schedule, chain_timing

    if len(stream.streams) == 0:
        return [], 0, 0, 0
    try:
        schedule = Schedule(chain_timing([stream_rule(s) for s in stream.streams]))
    except (NotImplementedError, ValueError):
        return [], 0, 0, 0
    return schedule.table, schedule.settled, schedule.period, schedule.longest_wait


class Residual1dStream(BaseStream):
    """Streams a :class:`Residual1d`: the inner stream plus a delayed copy of the input.

    Output ``j`` of the inner network lines up with input ``j + trim // 2``; the stream keeps
    the inputs whose inner outputs have not come yet (a bounded number) and adds them when they
    do. The inner network must shorten every signal by the same ``trim``, i.e. keep the rate.

    Args:
        residual: the residual module (or any module; it is then the inner network).
        padding: ``"valid"`` (default) or ``"model"``, passed to the inner stream.
        path: the module's path in a larger model, used in error messages.
        in_channels: channels of the input, when the inner layers do not tell.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> block = pts.Residual1d(torch.nn.Conv1d(2, 2, 5))
        >>> stream = pts.Residual1dStream(block)
        >>> x = torch.randn(2, 30)
        >>> y = torch.cat([stream(x[:, :11]), stream(x[:, 11:], final=True)], -1)
        >>> torch.allclose(y, block(x), atol=1e-6)
        True
    """

    _state_tensors = ("_skip",)
    _skip: Tensor
    _state_ints = ("_rank", "_batch", "_channels", "_fill", "_drop")

    def __init__(
        self,
        residual: nn.Module,
        padding: str = "valid",
        *,
        path: str = "",
        in_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        from torchstreamer.streams.registry import create_stream

        check_padding_choice(padding)
        inner = residual.net if isinstance(residual, Residual1d) else residual
        inner_path = f"{path}.net" if path else "net"
        self._label = layer_label(residual, path)
        channels = in_channels if in_channels is not None else _input_channels(inner)
        self._in_channels = -1 if channels is None else channels
        _BUILDING_LAYERS.value += 1
        try:
            self.stream = create_stream(inner, padding, in_channels=channels, path=inner_path)
        finally:
            _BUILDING_LAYERS.value -= 1
        try:
            trims = {n - self.stream.output_length(n) for n in range(256, 256 + 64)}
        except NotImplementedError as error:
            raise NotStreamableError(
                f"{self._label}: the stream of its inner network does not define "
                "output_length(), so the residual cannot be aligned; implement it in the "
                "registered streamer."
            ) from error
        if len(trims) != 1:
            raise NotStreamableError(
                f"{self._label}: its inner network changes the signal's length by an amount "
                "that depends on the length (it changes the rate), so the residual has no fixed "
                "alignment; keep the inner network's total stride at 1."
            )
        self._trim = trims.pop()
        if self._trim < 0:
            raise NotStreamableError(
                f"{self._label}: its inner network lengthens the signal by {-self._trim} "
                "samples, so the residual cannot be added to it; crop the inner output."
            )
        self._crop_left = residual_crop(self._trim)[0]
        self.register_buffer("_skip", torch.zeros(0), persistent=False)
        self._rank = 0
        self._batch = -1
        self._channels = -1
        self._fill = 0
        self._drop = self._crop_left

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        channels = self._in_channels if self._in_channels >= 0 else self._channels
        check_block(self._label, x, channels, self._reference(), self._rank, self._batch)
        batched = x.dim() == 3
        xb = x if batched else x.unsqueeze(0)
        if self._rank == 0:
            self._skip = fit_buffer(
                self._skip, xb, xb.shape[1], self._skip.shape[-1] if self._skip.dim() == 3 else 0
            )
            self._rank = x.dim()
            self._batch = xb.shape[0]
            self._channels = xb.shape[1]
        y = self.stream(x, final)
        if self._drop > 0:
            dropped = min(self._drop, xb.shape[-1])
            xb = xb[:, :, dropped:]
            self._drop -= dropped
        skip = xb if self._fill == 0 else torch.cat([self._skip[:, :, : self._fill], xb], -1)
        out: Optional[Tensor] = None
        if y is not None and y.shape[-1] > 0:
            yb = y if batched else y.unsqueeze(0)
            used = yb.shape[-1]
            out = yb + skip[:, :, :used]
            skip = skip[:, :, used:]
            if not batched:
                out = out.squeeze(0)
        if final:
            self.reset()
        else:
            self._keep(skip)
        return out

    def _keep(self, skip: Tensor) -> None:
        """Keep the inputs still waiting for their inner outputs (grows only while warming up)."""
        if skip.shape[-1] > self._skip.shape[-1]:
            self._skip = torch.cat([self._skip, torch.zeros_like(skip).detach()], -1)
        self._skip[:, :, : skip.shape[-1]].copy_(skip.detach())
        self._fill = skip.shape[-1]

    @torch.jit.unused
    def _check_state(self, state: dict[str, Tensor]) -> None:
        """The signal counters, the shape of the kept inputs and the inner stream's signal."""
        check_signal_state(self._label, state, self._in_channels, {"_skip": -1})
        rank, batch = state_int(state, "_rank"), state_int(state, "_batch")
        fill, drop = state_int(state, "_fill"), state_int(state, "_drop")
        kept = state["_skip"].shape[-1] if state["_skip"].dim() == 3 else 0

        def refuse(found: str) -> StreamError:
            return StreamError(
                f"The state does not fit {self._label}: {found}; restore a state that "
                "get_state() returned for a stream of the same model."
            )

        if rank == 0 and (fill != 0 or drop != self._crop_left):
            raise refuse(
                f"no signal is in progress ('_rank' is 0) but '_fill' is {fill} and '_drop' is "
                f"{drop} instead of 0 and {self._crop_left}"
            )
        if not 0 <= drop <= self._crop_left:
            raise refuse(f"'_drop' is {drop} but must be between 0 and {self._crop_left}")
        if not 0 <= fill <= kept or (drop > 0 and fill > 0):
            raise refuse(
                f"'_fill' is {fill} but must be between 0 and {kept} (the length of '_skip'), "
                "and 0 while inputs are still dropped"
            )
        inner_rank = state.get("stream._rank")
        if inner_rank is not None and int(inner_rank.item()) != rank:
            raise refuse(f"'stream._rank' is {int(inner_rank.item())} but '_rank' is {rank}")
        inner_batch = state.get("stream._batch")
        if inner_batch is not None and rank == 3 and int(inner_batch.item()) != batch:
            raise refuse(f"'stream._batch' is {int(inner_batch.item())} but '_batch' is {batch}")

    @torch.jit.export
    def promise(self, n: int) -> int:
        """The inner network shortens every signal by the same trim; its own layers get no
        promise (their outputs must not come before the samples added to them)."""
        return max(n - self._trim, 0) if n > 0 else 0

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress."""
        self.stream.reset()
        self._rank = 0
        self._batch = -1
        self._channels = -1
        self._fill = 0
        self._drop = self._crop_left

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        reference = self.stream._reference()
        if reference is None and self._rank != 0:
            return self._skip
        return reference

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return self.stream.output_length(n)

    @torch.jit.unused
    def _check_end(self, total: int) -> None:
        self.stream._check_end(total)
