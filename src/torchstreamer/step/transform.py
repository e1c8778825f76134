"""`StepModel` and `streaming_transform`: one data point in, one data point out, state inside."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, fx, nn

from torchstreamer.base import ONE_BUILD_AT_A_TIME, check_state_values
from torchstreamer.errors import StreamError, StreamInputError
from torchstreamer.serve.rows import RowLayout
from torchstreamer.step.codegen import compile_graph
from torchstreamer.step.rewrite import StepGraph, build_step_graph

__all__ = ["StepModel", "streaming_transform"]

Outputs = Union[Tensor, tuple[Tensor, ...]]


def _inplace_graph(step: StepGraph) -> fx.Graph:
    """The pure step graph rewritten to read its state from buffers and write it back in place
    (``copy_``) as soon as each new state is computed; it returns only the model's outputs."""
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    output = next(n for n in step.graph.nodes if n.op == "output")
    results = list(output.args[0])
    placeholders = [n for n in step.graph.nodes if n.op == "placeholder"]
    writes: dict[fx.Node, list[str]] = {}
    for spec, new in zip(step.states, results[step.outputs :]):
        writes.setdefault(new, []).append(spec.name)
    for node in step.graph.nodes:
        if node.op == "placeholder":
            index = placeholders.index(node)
            mapping[node] = (
                graph.placeholder(node.name)
                if index == 0
                else graph.get_attr(step.states[index - 1].name)
            )
        elif node.op == "output":
            ys = [mapping[n] for n in results[: step.outputs]]
            graph.output(ys[0] if len(ys) == 1 else tuple(ys))
        else:
            mapping[node] = graph.node_copy(node, lambda n: mapping[n])
            for name in writes.get(node, []):
                graph.call_method("copy_", (graph.get_attr(name), mapping[node]))
    return graph


class StepModel(nn.Module):
    """A causal model as a step function: ``step(x_t)`` takes one data point (the model's input
    without its time axis), returns the model's output at that time step and updates its state.

    Built by :func:`streaming_transform`. The state is a fixed set of buffers, allocated once and
    written in place; :attr:`state_names` lists them. The model's weights are copied when the
    step model is built: transform again after changing them.

    A frame step model (:attr:`frame` is a number of samples) keeps the time axis instead:
    ``step(x_frame)`` takes ``frame`` input samples (or a whole multiple of them) on
    :attr:`axis` and returns the outputs they complete, ``frame`` times the model's rate per
    output. :class:`torchstreamer.StepStream` feeds it blocks of any size.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> model = torch.nn.Sequential(pts.PaddedConv1d(2, 4, 3), torch.nn.ReLU()).eval()
        >>> x = torch.randn(1, 2, 10)
        >>> step, axis = pts.streaming_transform(model, x, 2)
        >>> y = torch.stack([step(x[:, :, t]) for t in range(10)], axis)
        >>> torch.allclose(y, model(x), atol=1e-6)
        True
    """

    def __init__(self, step: StepGraph, label: str, axis: int = 0) -> None:
        super().__init__()
        self._label = label
        self.axis = axis  # the time axis of the model's input
        self.frame: Optional[int] = step.frame
        self.held_back = step.held_back
        self.drops_partial_frames = step.drops_partial_frames
        self.crops_end = step.crops_end
        # per output: how many values from before the signal come first (a lagging frame model,
        # built for torchstreamer.stream; StepStream drops them)
        self.skips: tuple[int, ...] = tuple(step.skips) or (0,) * step.outputs
        # per output: first values the frames never compute (left padding at the output)
        self.leads: tuple[int, ...] = tuple(step.leads) or (0,) * step.outputs
        self.phase = step.phase  # samples from before the signal that the first frame takes
        # per output: first values that a lagging frame model may get wrong (computed offline)
        self.dirty: tuple[int, ...] = tuple(step.dirty) or (0,) * step.outputs
        # per recurrent node (a lagging frame model): its states that the end entry carries on
        self.carried: dict[str, dict[str, str]] = dict(step.carried)
        self.state_names: tuple[str, ...] = tuple(spec.name for spec in step.states)
        self.output_axes: tuple[int, ...] = tuple(step.output_axes)
        self.layers: tuple[str, ...] = tuple(spec.layer for spec in step.states)
        self._outputs = step.outputs
        self._input_shape = torch.Size(step.input_shape)
        root = step.root
        self.initial = nn.Module()  # the state at the start of a signal
        for spec in step.states:
            root.register_buffer(spec.name, spec.initial.clone())
            self.initial.register_buffer(spec.name, spec.initial.clone())
        graph = _inplace_graph(step)
        self.step_function = fx.GraphModule(root, graph, class_name="Step")
        self._inplace = graph
        self._pure_graph = step.graph
        self._rows: Optional[RowLayout] = None  # found when rows first restart on their own
        self._bind()

    def _bind(self) -> None:
        """(Re)generate the fast function over the current tensors, and note the dtype and
        device that inputs must have."""
        self._fast = compile_graph(self._inplace, self.step_function)
        floating = [t for t in self.step_function.buffers() if t.is_floating_point()]
        self._dtype: Optional[torch.dtype] = floating[0].dtype if floating else None
        self._device: Optional[torch.device] = floating[0].device if floating else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_fast", None)  # generated code bound to these tensors: made again on load
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._bind()  # a copy (deepcopy, torch.load) must run on its own tensors

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> StepModel:
        result = super()._apply(fn, recurse)
        self._bind()  # .to(), .cuda(), .double() replace the tensors
        return result

    # -- running ------------------------------------------------------------------------

    def forward(self, x: Tensor, start: Optional[Tensor] = None) -> Outputs:
        """Run one time step on ``x`` (shaped like the example input without its time axis), or
        one or more frames for a frame step model.

        ``start`` (one bool per row of the batch) starts a new signal in the flagged rows
        before this step, while the other rows go on (see :meth:`restart_rows`)."""
        if start is not None:
            self._check(x)
            self.restart_rows(start)
        return self._step(x)

    def _check(self, x: Tensor) -> None:
        if x.shape != self._input_shape and not self._whole_frames(x):
            self._refuse(x)
        if self._dtype is not None and (x.dtype != self._dtype or x.device != self._device):
            self._refuse(x)

    def _step(self, x: Tensor) -> Outputs:
        self._check(x)
        if torch.compiler.is_compiling():  # let the compiler see the module and its buffers
            return self.step_function(x)
        if torch.is_grad_enabled():  # the state must not record autograd history
            with torch.no_grad():
                return self._fast(x)
        return self._fast(x)

    def _whole_frames(self, x: Tensor) -> bool:
        """Whether ``x`` is several frames: the frame's shape but a multiple of its length."""
        if self.frame is None or x.dim() != len(self._input_shape):
            return False
        return (
            x.shape[self.axis] > 0
            and x.shape[self.axis] % self.frame == 0
            and all(
                size == own
                for d, (size, own) in enumerate(zip(x.shape, self._input_shape))
                if d != self.axis
            )
        )

    def _refuse(self, x: Tensor) -> None:
        if self.frame is not None and x.shape != self._input_shape and not self._whole_frames(x):
            raise StreamInputError(
                f"The {self._label} takes frames shaped {list(self._input_shape)} per call (or a "
                f"multiple of {self.frame} samples on axis {self.axis}) but got shape "
                f"{list(x.shape)}; torchstreamer.StepStream takes blocks of any length."
            )
        if x.shape != self._input_shape and self.frame is None:
            raise StreamInputError(
                f"The {self._label} takes one data point shaped {list(self._input_shape)} per "
                f"call but got shape {list(x.shape)}."
            )
        raise StreamInputError(
            f"The {self._label} computes in {self._dtype} on {self._device} but got {x.dtype} "
            f"on {x.device}; convert the input or the step model."
        )

    # -- state ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new signal: every state back to its initial value, in place."""
        with torch.no_grad():
            for name in self.state_names:
                self.step_function.get_buffer(name).copy_(self.initial.get_buffer(name))

    def row_layout(self) -> RowLayout:
        """Where the rows of the batch lie in each state tensor (found once, by running the
        pure step on inputs that differ in one row).

        Raises:
            StreamError: the model mixes rows (its rows cannot start and stop on their own).
        """
        if self._rows is None:
            self._rows = RowLayout(self)
        return self._rows

    def restart_rows(self, flags: Tensor) -> None:
        """Start a new signal in the rows whose flag is set (one bool per row of the batch): their
        state goes back to its initial value, in place; the other rows keep theirs.

        Raises:
            StreamInputError: ``flags`` is not one flag per row (nothing changed).
            StreamError: the model mixes rows of its batch.
        """
        layout = self.row_layout()
        flags = layout.check_flags(flags, "start").to(self._device or "cpu")
        with torch.no_grad():
            for name, axis in zip(self.state_names, layout.axes):
                own = self.step_function.get_buffer(name)
                initial = self.initial.get_buffer(name)
                own.copy_(torch.where(layout.mask(flags, own, axis), initial, own))

    def step_rows(self, x: Tensor, active: Tensor) -> Outputs:
        """Run one step (or frames) for the rows whose ``active`` flag is set; the other rows
        keep their state (their outputs in the result are meaningless). This is how rows pause:
        a serving loop runs every row in one call and masks those that had no data."""
        self._check(x)
        layout = self.row_layout()
        active = layout.check_flags(active, "active").to(self._device or "cpu")
        if bool(active.all()):
            return self._step(x)
        before = self.snapshot()
        outputs = self._step(x)
        with torch.no_grad():
            for (name, old), axis in zip(before.items(), layout.axes):
                own = self.step_function.get_buffer(name)
                own.copy_(torch.where(layout.mask(active, own, axis), own, old))
        return outputs

    def snapshot(self) -> dict[str, Tensor]:
        """A copy of the state, by name: :meth:`restore` (here or on another step model of the
        same model) continues the stream bit-identically."""
        return {name: self.step_function.get_buffer(name).clone() for name in self.state_names}

    def restore(self, snapshot: dict[str, Tensor]) -> None:
        """Load a state from :meth:`snapshot` (copied in place: buffers keep their storage).

        Raises:
            StreamError: names, shapes or dtypes do not match this step model's state.
        """
        check_state_values(snapshot)
        missing = sorted(set(self.state_names) - set(snapshot))
        extra = sorted(set(snapshot) - set(self.state_names))
        if missing or extra:
            raise StreamError(
                f"The snapshot does not fit this step model: missing {missing}, unexpected {extra}."
            )
        for name in self.state_names:
            own, value = self.step_function.get_buffer(name), snapshot[name]
            if value.shape != own.shape or value.dtype != own.dtype:
                raise StreamError(
                    f"State '{name}' must be {own.dtype} shaped {list(own.shape)} but the "
                    f"snapshot has {value.dtype} shaped {list(value.shape)}."
                )
        with torch.no_grad():
            for name in self.state_names:
                self.step_function.get_buffer(name).copy_(snapshot[name])

    def initial_state(self) -> tuple[Tensor, ...]:
        """The state at the start of a signal, in :attr:`state_names` order (for :meth:`pure`)."""
        return tuple(self.initial.get_buffer(name).clone() for name in self.state_names)

    # -- other forms ----------------------------------------------------------------------

    def pure(self) -> fx.GraphModule:
        """The step as a pure function ``(x_t, *state) -> (*y_t, *new_state)``: no buffers
        change, the state goes in and out (the form of :func:`torchstreamer.export_onnx`)."""
        return fx.GraphModule(self.step_function, self._pure_graph, class_name="PureStep").eval()

    def cuda_graph(self, warmup: int = 3) -> Callable[[Tensor], Outputs]:
        """A function that runs this step by replaying a captured CUDA graph (one launch per
        step). The step model must be on a CUDA device; it and the returned function share the
        state buffers. Each call returns fresh output tensors.

        Raises:
            StreamError: the step model is not on a CUDA device.
        """
        if self._device is None or self._device.type != "cuda":
            raise StreamError(
                f"The {self._label} must be on a CUDA device to capture a CUDA graph; call "
                ".to('cuda') first (a model without tensors has no device to capture on)."
            )
        static_x = torch.zeros(self._input_shape, dtype=self._dtype, device=self._device)
        saved = self.snapshot()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.no_grad():
                with torch.cuda.stream(side):
                    for _ in range(warmup):
                        self.step_function(static_x)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_y = self.step_function(static_x)
        finally:
            self.restore(saved)  # warm-up and capture ran steps: the stream is where it was

        def replay(x: Tensor) -> Outputs:
            if x.shape != self._input_shape or x.dtype != static_x.dtype:
                self._refuse(x)
            static_x.copy_(x)
            graph.replay()
            if isinstance(static_y, tuple):
                return tuple(y.clone() for y in static_y)
            return static_y.clone()

        return replay

    @property
    def code(self) -> str:
        """The Python source of the generated step function (what one call runs)."""
        return self._fast.__doc__ or ""

    def extra_repr(self) -> str:
        frame = f"frame {self.frame}, " if self.frame is not None else ""
        return f"{frame}input {list(self._input_shape)}, state {list(self.state_names)}"


def streaming_transform(
    model: nn.Module,
    example_input: Tensor,
    axis: int = -1,
    frame: Union[int, str, None] = None,
) -> tuple[StepModel, Any]:
    """Turn a causal model into a step model that takes one data point per call (or one frame).

    ``axis`` is the sequence axis of ``example_input``. ``step(x_t)`` takes ``example_input``
    without that axis (same batch size) and returns the model's output at that time step;
    stacking the outputs along ``output_axis`` reproduces ``model(x)``. Models qualify when every
    output sample depends only on inputs up to its own time (latency 0) and the output has one
    sample per input sample (rate 1): causal convolutions (:class:`PaddedConv1d`), residual and
    gated blocks, concatenations, ``nn.LSTM``/``nn.GRU``/``nn.RNN``, per-step ``Linear`` and
    ``LayerNorm``, stride-1 pools, ``cumsum`` over time.

    With ``frame`` (a number of input samples, or ``"auto"`` for the smallest that works) the
    step takes frames: ``example_input`` with ``frame`` samples on ``axis``, and returns
    ``frame * rate`` samples of each output, time axis kept; concatenating them along
    ``output_axis`` reproduces ``model(x)``. This lets models that change the sampling rate
    (strided convolutions and pools, transposed convolutions, upsampling) run with static
    shapes; ``step.held_back`` tells how many samples a frame may hold an output back (0 for
    ``"auto"`` when each frame's outputs all depend on its last sample).

    Returns:
        ``(step, output_axis)``: a :class:`StepModel` and the time axis of the model's output
        (a tuple of axes when the model returns several tensors).

    Raises:
        NotStreamableError: the model needs lookahead, changes the rate without a frame, or
            cannot stream; the message names the layer and points to :func:`torchstreamer.stream`.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> conv = pts.PaddedConv1d(3, 1, 5).eval()
        >>> x = torch.randn(2, 3, 20)  # two independent streams
        >>> step, axis = pts.streaming_transform(conv, x, 2)
        >>> y = torch.stack([step(x[..., t]) for t in range(20)], axis)
        >>> torch.allclose(y, conv(x), atol=1e-6)
        True
        >>> down = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 2, stride=2), torch.nn.ReLU())
        >>> step, axis = pts.streaming_transform(down.eval(), x, 2, frame="auto")
        >>> step.frame, step(x[..., :2]).shape
        (2, torch.Size([2, 4, 1]))
    """
    axis = axis % max(example_input.dim(), 1)
    with ONE_BUILD_AT_A_TIME:  # (the capture and the checks that run the model: see base)
        was_training = model.training
        _set_training(model, False)
        try:
            step_graph = build_step_graph(model, example_input, axis, frame)
            step = StepModel(step_graph, f"step model of {type(model).__name__}", axis)
            if step.frame is None:
                _check_against_offline(step, model, example_input, axis)
            else:
                _check_frames_against_offline(step, model, example_input, axis)
        finally:
            _set_training(model, was_training)
    axes = step.output_axes
    return step, axes[0] if len(axes) == 1 else axes


def _set_training(model: nn.Module, mode: bool) -> None:
    # torch.export's unlifted modules have no train/eval switch
    with contextlib.suppress(NotImplementedError):
        model.train(mode)


def _check_against_offline(step: StepModel, model: nn.Module, x: Tensor, axis: int) -> None:
    """Step through the start of the example and compare with the offline model: a guard
    against a rewrite that would be silently wrong."""
    length = min(x.shape[axis], 64)
    with torch.no_grad():
        expected = model(x.narrow(axis, 0, length))
        outputs = [step(x.select(axis, t)) for t in range(length)]
    step.reset()
    expected_list = list(expected) if isinstance(expected, tuple) else [expected]
    for i, (offline, out_axis) in enumerate(zip(expected_list, step.output_axes)):
        streamed = torch.stack([o[i] if isinstance(o, tuple) else o for o in outputs], out_axis)
        _compare(step, streamed, offline, i)


def _check_frames_against_offline(step: StepModel, model: nn.Module, x: Tensor, axis: int) -> None:
    """Run the start of the example frame by frame, then as one call, and compare both with the
    offline model."""
    frame = step.frame
    assert frame is not None
    while 0 < x.shape[axis] < 3 * frame:  # at least three frames, so that state carries over
        x = torch.cat([x, x], axis)
    count = max(3, min(x.shape[axis] // frame, 64 // frame))
    signal = x.narrow(axis, 0, count * frame)
    with torch.no_grad():
        expected = model(signal)
        by_frame = [step(signal.narrow(axis, f * frame, frame)) for f in range(count)]
        step.reset()
        at_once = step(signal)
    step.reset()
    expected_list = list(expected) if isinstance(expected, tuple) else [expected]
    at_once_list = list(at_once) if isinstance(at_once, tuple) else [at_once]
    for i, (offline, out_axis) in enumerate(zip(expected_list, step.output_axes)):
        pieces = [o[i] if isinstance(o, tuple) else o for o in by_frame]
        for streamed in (torch.cat(pieces, out_axis), at_once_list[i]):
            _compare(step, streamed, offline, i)


def _compare(step: StepModel, streamed: Tensor, offline: Tensor, index: int) -> None:
    scale = float(offline.abs().max()) if offline.numel() else 0.0
    if streamed.shape != offline.shape or not torch.allclose(
        streamed, offline, rtol=1e-4, atol=1e-5 * max(1.0, scale)
    ):
        raise StreamError(
            f"The {step._label} does not reproduce the model on the example (output {index}); "
            "this is a bug of torch-streamer: please report it with the model. "
            "torchstreamer.stream(model, example) streams it meanwhile."
        )
