"""The fine-tuning loop of the gradient methods: epochs of shuffled mini-batches through the torch lowering.

Per epoch ``e`` (0-based): the training images are visited in the order ``default_rng([seed, e]).permutation``;
each batch's loss (the method's, :mod:`snncc.finetune.methods`) is backpropagated and one optimizer step taken at
the learning rate :func:`learning_rate` gives for that step; then the neuron parameters are projected back into
the IR's domain (:data:`PROJECTIONS`). At the end of the epoch the validation accuracy on the held-back images is
measured (the readout's argmax at T, as the runtime classifies) and, with a checkpoint directory, a checkpoint
written (:mod:`snncc.finetune.checkpoint`).

Determinism: ``torch.manual_seed(seed)`` before the module is built, the shuffling from the seed and the epoch
alone, a learning rate that is a function of the step (no scheduler state), and only deterministic CPU kernels
(the lowering has no random op). A run resumed from the checkpoint of epoch ``e`` restores the parameters, the
optimizer's state and torch's generator state exactly, so it ends with the same weights, bit for bit, as the
uninterrupted run on the same machine and thread count.

The data are the images as stored (pixels, say); the input scaling recorded in the graph is applied first, as
``snncc eval`` and :meth:`snncc.runtime.Simulator.run` apply it.

Distillation (``options.distill`` = alpha > 0, :mod:`snncc.finetune.distill`): the ANN's logits on every training
image are computed once before the first epoch; each batch's loss is then ``(1 - alpha)`` times the method's plus
``alpha`` times the distillation term on the logits the method returned.

Many processes (``torchrun``, :class:`snncc.distributed.World`): every rank visits the same global batches in the
same order and works on its contiguous block of each (:meth:`World.shard`); its loss is scaled by its share of the
global batch, and after the backward pass the gradients are summed over the ranks (one all-reduce of all gradients),
so each rank takes the optimizer step of the global batch's mean loss and the parameters stay identical on every
rank. For the same global batch size and seed the weights equal those of one process up to the order of the floating
point reduction. Rank 0 alone writes checkpoints. (torch's DistributedDataParallel is not used because the methods
call the lowered module's other entry points, such as the analog pass of proxy learning, besides its forward.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from snncc.data import InputScaling
from snncc.distributed import World
from snncc.errors import DataError, SnnccError
from snncc.finetune.checkpoint import Checkpoint, check_matches, data_sha256, graph_sha256, load_checkpoint, \
    save_checkpoint
from snncc.finetune.distill import Teacher, distillation_loss, source_teacher, teacher_logits
from snncc.finetune.methods import Method
from snncc.finetune.options import FinetuneOptions
from snncc.ir import Graph, ops
from snncc.runtime.analog import check_input
from snncc.runtime.dynamics import is_logic_gate
from snncc.runtime.torch_lowering import LoweredGraph, LoweredTemporalGraph, lower

#: Smallest threshold a trained population keeps: thresholds must stay positive (the IR refuses others).
THRESHOLD_FLOOR = 1e-3
#: Parameter fields projected after every step, by the name of the lowering's parameter: (low, high) bounds.
PROJECTIONS: dict[str, tuple[float | None, float | None]] = {
    "threshold": (THRESHOLD_FLOOR, None), "decay": (0.0, 1.0), "keep_u": (0.0, 1.0), "keep_v": (0.0, 1.0)}
#: Images per batch of the validation pass (no gradients, so larger than a training batch).
VALIDATION_BATCH = 200


@dataclass
class TrainingResult:
    """The trained graph and what each epoch measured."""

    graph: Graph
    history: list[dict] = field(default_factory=list)
    graph_sha256: str = ""
    data_sha256: str = ""
    resumed_from_epoch: int = 0


def learning_rate(options: FinetuneOptions, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based). ``cosine``: ``lr (1 + cos(pi s / S)) / 2`` over all
    ``S`` steps (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts); ``step``: ``lr`` divided by 10 from
    half of the epochs on and by 100 from three quarters on; ``none``: ``lr``."""
    total = options.epochs * steps_per_epoch
    if options.schedule == "cosine":
        return options.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if options.schedule == "step":
        epoch = step // steps_per_epoch
        return options.lr * 0.1 ** ((epoch >= options.epochs / 2) + (epoch >= 3 * options.epochs / 4))
    return options.lr


def split_training_data(x: np.ndarray, y: np.ndarray,
                        val_limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training images and the last ``val_limit`` held back for validation (never the test set)."""
    if val_limit >= len(x):
        raise DataError(f"--val-limit {val_limit} holds back every one of the {len(x)} training images; give a "
                        f"smaller --val-limit (or 0 for no validation) or more images (--limit)")
    cut = len(x) - val_limit
    return x[:cut], y[:cut], x[cut:], y[cut:]


def model_inputs(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The stored data as the model's inputs: the graph's recorded input scaling, then its input shape."""
    scaling = InputScaling.from_json(graph.attrs.get("input_scaling", {}))
    return check_input(graph, scaling.apply(np.asarray(x)))


def check_temporal(module: LoweredGraph | LoweredTemporalGraph, method: Method, options: FinetuneOptions) -> None:
    """Refuse what cannot train a temporally coded graph (FS, AMOS): a method without its analog mode, and a T
    shorter than the latency, at which the readout has not answered yet (its output is zero, so the loss would have
    no gradient and the run would train nothing)."""
    if not isinstance(module, LoweredTemporalGraph):
        return
    if not method.temporal:
        raise SnnccError(f"method {method.name!r} needs the ANN the rate conversion assumed, which temporally coded "
                         "(FS/AMOS) graphs do not have; use --method surrogate (for FS graphs it trains through "
                         "the K-step windows in one pass)")
    if options.timesteps < module.latency:
        raise SnnccError(f"--timesteps {options.timesteps} is shorter than the latency of this temporally coded "
                         f"graph, {module.latency} steps (every FS/AMOS layer's window of K steps, one after the "
                         f"other): its readout answers only at step {module.latency}; give --timesteps "
                         f"{module.latency}")


def freeze_logic_gates(graph: Graph, module: LoweredGraph) -> list[str]:
    """Fix the parameters of the memoryless LIF populations (``tau_mem = 0``), the SEW connect functions' gates
    and the OR gates of a chip's float form (``loihi-fold``'s max pooling): on binary spikes they compute a logic
    function (AND fires at ``a + s >= 1.5``, IAND at ``s - a >= 0.5``, OR at ``sum >= 0.5``), which any threshold
    between the input levels gives alike, and a trained threshold outside that interval, or a decay above zero,
    would change the function itself. An OR gate's gather (the depthwise convolution of ones that ``loihi-fold``
    marks ``or_gate_of``) is fixed with it: its weights are the logic's wiring, not parameters. They keep
    ``requires_grad = False`` (and stay in the optimizer, which skips them, so checkpoints keep their layout).
    Returns the frozen nodes."""
    frozen = []
    for node in graph.topological_order():
        op = graph.op(node)
        gate = isinstance(op, ops.Population) and is_logic_gate(op.neuron)
        if gate or (op.synaptic and "or_gate_of" in graph.meta.get(node, {})):
            for parameter in module.parameters_of(node).values():
                parameter.requires_grad_(False)
            frozen.append(node)
    return frozen


def _optimizer(module: LoweredGraph, options: FinetuneOptions) -> torch.optim.Optimizer:
    parameters = list(module.parameters())
    if options.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=options.lr)
    return torch.optim.SGD(parameters, lr=options.lr, momentum=options.momentum)


def _project(module: LoweredGraph) -> None:
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            bounds = PROJECTIONS.get(name.rsplit(".", 1)[-1])
            if bounds is not None:
                parameter.clamp_(*bounds)


def accuracy(module: LoweredGraph, x: np.ndarray, y: np.ndarray, timesteps: int, device: torch.device) -> float:
    """Top-1 accuracy of the module's readout after ``timesteps`` steps on model inputs ``x``."""
    from snncc.finetune.methods import readout_logits

    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), VALIDATION_BATCH):
            logits = readout_logits(module, torch.as_tensor(x[start:start + VALIDATION_BATCH], device=device),
                                    timesteps)
            correct += int((logits.argmax(dim=1).cpu().numpy() == y[start:start + VALIDATION_BATCH]).sum())
    return correct / len(x)


def _snapshot(module: LoweredGraph, optimizer: torch.optim.Optimizer, epoch: int, step: int, method: Method,
              options: FinetuneOptions, graph_hash: str, data_hash: str, history: list[dict]) -> Checkpoint:
    names = [name for name, _ in module.named_parameters()]
    state = optimizer.state_dict()["state"]
    optim = {index: {key: (value.detach().cpu().numpy() if torch.is_tensor(value) else value)
                     for key, value in entry.items()} for index, entry in state.items()}
    return Checkpoint(epoch=epoch, step=step, method=method.name, options=options.result_options(),
                      graph_sha256=graph_hash, data_sha256=data_hash,
                      parameters={n: p.detach().cpu().numpy() for n, p in zip(names, module.parameters())},
                      optimizer=optim, torch_rng=torch.get_rng_state().numpy(), history=list(history))


def _restore(module: LoweredGraph, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint, where: str) -> None:
    from snncc.errors import FormatError

    named = dict(module.named_parameters())
    if set(named) != set(checkpoint.parameters):
        raise FormatError(f"checkpoint {where} holds parameters {sorted(set(checkpoint.parameters) ^ set(named))[:4]} "
                          "that this graph's lowering does not have, or lacks them; it belongs to another model")
    with torch.no_grad():
        for name, parameter in named.items():
            value = checkpoint.parameters[name]
            if tuple(value.shape) != tuple(parameter.shape):
                raise FormatError(f"checkpoint {where}: parameter {name} has shape {value.shape}, the model "
                                  f"{tuple(parameter.shape)}")
            parameter.copy_(torch.as_tensor(value))
    state = optimizer.state_dict()
    if any(i >= len(named) for i in checkpoint.optimizer):
        raise FormatError(f"checkpoint {where}: optimizer state for more parameters than the model has")
    device = next(iter(named.values())).device
    state["state"] = {i: {k: (torch.as_tensor(v, device=device) if k != "step" else torch.as_tensor(v))
                          if isinstance(v, np.ndarray) else v for k, v in entry.items()}
                      for i, entry in checkpoint.optimizer.items()}
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise FormatError(f"checkpoint {where}: the optimizer state does not fit ({exc})") from None
    torch.set_rng_state(torch.as_tensor(checkpoint.torch_rng, dtype=torch.uint8))


def train(graph: Graph, x: np.ndarray, y: np.ndarray, method: Method, options: FinetuneOptions,
          progress: bool = True, world: World | None = None, teacher: Teacher | None = None) -> TrainingResult:
    """Fine-tune ``graph`` on the stored training images ``x`` (N, ...) with labels ``y`` by the gradient method
    ``method``; returns the graph with the trained parameters written back and the per-epoch history. ``world``:
    the data-parallel processes under torchrun (every rank passes the same data). ``teacher``: the ANN to distil
    from when ``options.distill > 0`` (default :func:`~snncc.finetune.distill.source_teacher`)."""
    world = world or World()
    graph_hash, data_hash = graph_sha256(graph), data_sha256(x, y)
    inputs = model_inputs(graph, x)
    x_train, y_train, x_val, y_val = split_training_data(inputs, np.asarray(y, dtype=np.int64), options.val_limit)
    soft = None
    if options.distill > 0:
        classes = graph.types()[graph.outputs[0]].size
        soft = teacher_logits(teacher or source_teacher(graph, options.teacher), x_train, classes)
    torch.manual_seed(options.seed)
    module = lower(graph, surrogate=options.surrogate, width=options.width, device=options.device)
    check_temporal(module, method, options)
    freeze_logic_gates(graph, module)
    device = module.device
    optimizer = _optimizer(module, options)
    steps_per_epoch = math.ceil(len(x_train) / options.batch_size)
    history: list[dict] = []
    first_epoch = step = 0
    if options.resume is not None:
        checkpoint = load_checkpoint(options.resume)
        check_matches(checkpoint, options.resume, method=method.name, options=options.result_options(),
                      graph=graph_hash, data=data_hash)
        _restore(module, optimizer, checkpoint, str(options.resume))
        first_epoch, step, history = checkpoint.epoch, checkpoint.step, list(checkpoint.history)
    checkpoint_dir = options.checkpoint or options.resume
    for epoch in range(first_epoch, options.epochs):
        order = np.random.default_rng([options.seed, epoch]).permutation(len(x_train))
        record = _train_epoch(module, optimizer, method, options, x_train[order], y_train[order], epoch, step,
                              steps_per_epoch, device, progress, world, None if soft is None else soft[order])
        step += steps_per_epoch
        if len(x_val):  # under torchrun each rank classifies its block of the held-back images
            part = world.shard(len(x_val))
            correct = round(accuracy(module, x_val[part], y_val[part], options.timesteps, device)
                            * len(y_val[part])) if len(y_val[part]) else 0
            record["val_accuracy"] = world.total(correct) / len(x_val)
        history.append(record)
        if progress:
            val = f", validation accuracy {100 * record['val_accuracy']:.2f}%" if "val_accuracy" in record else ""
            print(f"epoch {epoch + 1}/{options.epochs}: loss {record['loss']:.4f}, training accuracy "
                  f"{100 * record['train_accuracy']:.2f}%{val} ({record['seconds']:.0f} s)", flush=True)
        if checkpoint_dir is not None and world.is_writer:
            save_checkpoint(_snapshot(module, optimizer, epoch + 1, step, method, options, graph_hash, data_hash,
                                      history), checkpoint_dir)
    return TrainingResult(module.to_graph(), history, graph_hash, data_hash, first_epoch)


def _train_epoch(module: LoweredGraph, optimizer: torch.optim.Optimizer, method: Method, options: FinetuneOptions,
                 x: np.ndarray, y: np.ndarray, epoch: int, step: int, steps_per_epoch: int, device: torch.device,
                 progress: bool, world: World, soft: np.ndarray | None = None) -> dict:
    """One pass over ``x`` (already in this epoch's order); returns its mean loss, training accuracy, time. Under
    torchrun this rank trains on its block of every global batch and the gradients are summed over the ranks.
    ``soft``: the teacher's logits of ``x`` (same order) when distilling."""
    total_loss = correct = seen = 0
    start = time.perf_counter()
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch",
               disable=not progress, leave=False)
    for i in bar:
        batch = slice(i * options.batch_size, min((i + 1) * options.batch_size, len(x)))
        share = world.shard(batch.stop - batch.start)
        xb = torch.as_tensor(x[batch][share], device=device)
        yb = torch.as_tensor(y[batch][share], device=device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(options, step + i, steps_per_epoch)
        optimizer.zero_grad(set_to_none=True)
        if len(yb):  # a rank may get no image of a last batch smaller than the world
            loss, logits = method.loss(module, xb, yb, options.timesteps)
            if soft is not None:
                target = torch.as_tensor(soft[batch][share], device=device)
                loss = (1 - options.distill) * loss + options.distill * distillation_loss(logits, target,
                                                                                          options.temperature)
            (loss * (len(yb) / (batch.stop - batch.start))).backward()
            total_loss += float(loss.detach()) * len(yb)
            correct += int((logits.detach().argmax(dim=1) == yb).sum())
            seen += len(yb)
        world.sum_gradients(module.parameters())
        optimizer.step()
        _project(module)
        elapsed = time.perf_counter() - start
        if seen:
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.1f}%",
                            img_s=f"{seen / elapsed:.1f}" if elapsed > 0 else "-")
    bar.close()
    seconds = time.perf_counter() - start
    total_loss, correct, seen = world.total(total_loss), world.total(correct), int(world.total(seen))
    return {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen, "seconds": seconds,
            "images_per_second": seen / seconds if seconds > 0 else None, "images": seen}
