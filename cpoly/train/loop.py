"""The training loop on Hugging Face Accelerate: the same code on a CPU, one GPU or several processes.

One optimizer step trains on one global multi-task batch from `MultiTaskBatchSampler` (a pure function
of (seed, step), so a resumed run sees exactly the batches an uninterrupted run would), of
`batch_size x grad_accum x processes` examples, split into `grad_accum` micro-batches per process.
DataLoader workers build the coming steps' batches while the model trains (`cpoly.train.batches`). The
step's result does not depend on that split:
- the loss is the sum of the token losses of every micro-batch of every process divided by the step's
  total number of target tokens (counted, and all-reduced, before the first forward). Token gates'
  load-balancing loss (`SkillConfig.aux_loss_coef` > 0) joins it weighted by the micro-batch's share of
  those targets and is logged as `train/aux_loss`; it balances each micro-batch's own tokens, the one
  term that does depend on the split (docs/methods.md);
- routing noise belongs to the example: it is keyed by (seed, step, the example's position in the global
  batch), not drawn from the process's generator;
- dropout masks come from a generator seeded by (seed, step, process), so processes draw their own.
Every trainable tensor is stepped every step (those no example used get a zero gradient), the rule of
`docs/design-decisions.md`. Evaluation scores the dev split every `eval_every` steps and at the end; `last/`
(adapters + trainer state) is written after every evaluation, `best/` when the optimised dev metric
improves. With `max_steps=0` (a library scored as it is, `init_from`) the loop evaluates once, at step 0,
and trains nothing. Once the loop is done, `score_test` scores the test split twice: the final adapters
and `best/`'s (the step dev chose); nothing is ever chosen on test.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cpoly.config import OptimConfig, TrainerConfig
from cpoly.data.collate import Collator
from cpoly.data.sampling import MultiTaskBatchSampler
from cpoly.skills import pop_aux_loss, skill_state, use_tasks
from cpoly.skills.io import load_skill_tensors
from cpoly.train.batches import StepBatches, step_loader
from cpoly.train.checkpoint import restore_checkpoint, save_checkpoint
from cpoly.train.evaluation import DEV_AVERAGE, Evaluation
from cpoly.train.launch import prepare_backend
from cpoly.train.optim import build_optimizer, build_scheduler, fill_missing_grads, learning_rates
from cpoly.train.preemption import Preempted, stop_on_signals

log = logging.getLogger(__name__)


def selection_value(evaluation: Evaluation, optimized_metric: str) -> float:
    """The dev score `best/` is chosen by (the macro average `optimized_metric` names)."""
    key = optimized_metric.removeprefix(DEV_AVERAGE)
    averages = evaluation.scores["avg"]
    if key not in averages:
        raise KeyError(f"optimized_metric={optimized_metric}: the metric gives {sorted(averages)}, not {key!r}")
    return averages[key]


class TrainingDiverged(FloatingPointError):
    """The loss or the adapters became non-finite; `last/` keeps the last checkpoint written before."""


def dropout_seed(seed: int, step: int, process: int) -> int:
    """The seed of torch's generator for one step's dropout masks on one process: a pure function of
    (seed, step, process), so processes draw their own masks and a resumed run draws what the
    uninterrupted one did."""
    return int(np.random.SeedSequence([seed, step, process]).generate_state(1)[0])


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    best_value: float | None = None
    best_step: int | None = None
    best_scores: dict[str, dict[str, float]] | None = None  # dev, at best_step
    last_scores: dict[str, dict[str, float]] | None = None  # dev, the latest evaluation
    wandb_run_id: str | None = None
    train_seconds: float = 0.0  # wall time of the loop so far, evaluations included (across resumes)
    step_seconds: float = 0.0  # wall time of the optimizer steps (waiting for their batches included)
    data_seconds: float = 0.0  # ... of which waiting for the next step's batches and copying them to the device
    routing_seconds: float = 0.0  # ... and setting up routing (checking task ids, entering use_tasks)
    tokens: int = 0  # input + target tokens trained on, all processes
    batch_tasks: int = 0  # distinct tasks of every global batch so far, summed
    input_tokens: int = 0  # input tokens of every micro-batch of every process so far ...
    padded_input_tokens: int = 0  # ... and the positions they fill once padded
    # the training-loss window since the last log step, summed over processes (so a run stopped between
    # log steps logs, once resumed, exactly what it would have)
    window_loss: float = 0.0
    window_n: float = 0.0
    window_aux: float = 0.0  # the load-balancing loss, weighted as the training loss is

    def batch_mix(self) -> dict[str, float | None]:
        """Mean distinct tasks per global batch and the inputs' padding fraction, over the steps so far."""
        return {
            "tasks_per_batch": round(self.batch_tasks / self.step, 3) if self.step else None,
            "padding_fraction": round(1 - self.input_tokens / self.padded_input_tokens, 4)
            if self.padded_input_tokens
            else None,
        }

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainLoop:
    accelerator: Accelerator
    model: torch.nn.Module
    kind: str
    trainer: TrainerConfig
    optim: OptimConfig
    train_dataset: Any  # tokenised rows (datasets.Dataset)
    collator: Collator
    seed: int
    output_dir: Path
    optimized_metric: str  # a dev average, e.g. "dev/avg/rougeL"
    evaluate: Callable[[torch.nn.Module], Evaluation]  # scores the dev split
    on_log: Callable[[dict[str, float], int], None]
    on_eval: Callable[[Evaluation, int, bool], None]  # (evaluation, step, is_best)
    checkpoint_extra: Callable[[], dict[str, Any]] = lambda: {}
    state: LoopState = field(default_factory=LoopState)
    _saved_at: float = field(default_factory=time.monotonic, init=False)  # when `last/` was last written

    def __post_init__(self) -> None:
        prepare_backend(self.accelerator, self.model, self.kind)
        self.optimizer = build_optimizer(self.model, self.optim)
        self.scheduler = build_scheduler(self.optimizer, self.optim, self.trainer.max_steps)
        # The scheduler is stepped by hand once per optimizer step (Accelerate would step it once per
        # process); the sampler shards batches itself, so no dataloader is prepared.
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # the model inside DDP/FSDP's wrapper, found once: `unwrap_model` walks every module to look for
        # compiled regions, which three calls per step made 10% of a tiny model's step (pipeline_speed.py)
        self._unwrapped = self.accelerator.unwrap_model(self.model)
        self._pending_tokens = torch.zeros((), dtype=torch.long, device=self.accelerator.device)
        self.aux_loss_coef = skill_state(self.unwrapped).config.aux_loss_coef
        if self.aux_loss_coef and (self.trainer.grad_accum > 1 or self.accelerator.num_processes > 1):
            log.warning(
                "aux_loss_coef=%g: the load-balancing loss balances each micro-batch's tokens, so this run's result "
                "depends on grad_accum=%d and %d processes (docs/methods.md); compare runs with the same split",
                self.aux_loss_coef,
                self.trainer.grad_accum,
                self.accelerator.num_processes,
            )

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self._unwrapped

    # -- resume -----------------------------------------------------------------------------------
    def restore(self, directory: Path) -> None:
        state = restore_checkpoint(directory, self.unwrapped, self.optimizer.optimizer, self.scheduler)
        known = LoopState.__dataclass_fields__
        self.state = LoopState(**{k: v for k, v in state.items() if k in known})
        log.info("resumed from %s at step %d", directory, self.state.step)

    def _checkpoint(self, directory: Path, with_state: bool) -> None:
        # FSDP2's sharded adapters and optimizer state are gathered from every process; the main one writes
        acc = self.accelerator
        if not (acc.is_main_process or acc.is_fsdp2):
            return
        trainer_state = dict(self.state.as_dict(), **self.checkpoint_extra()) if with_state else None
        save_checkpoint(
            directory,
            self.unwrapped,
            self.optimizer.optimizer,
            self.scheduler,
            trainer_state,
            acc.is_main_process,
            keep=self.trainer.keep_checkpoints if with_state else 1,
        )

    # -- batches ---------------------------------------------------------------------------------
    def _batch_loader(self) -> DataLoader:
        """This process's micro-batches of every step still to train, built by DataLoader workers
        (`cpoly.train.batches`): a pure function of (seed, step), whatever the workers' timing."""
        t, acc = self.trainer, self.accelerator
        # whole columns through Arrow (iterating a datasets column decodes it row by row: seconds at 100k)
        tasks, lengths = (self.train_dataset.data.column(c).to_numpy() for c in ("task_id", "length"))
        sampler = MultiTaskBatchSampler(
            tasks=tasks,
            lengths=lengths,
            batch_size=t.global_batch_size(acc.num_processes),
            strategy=t.task_sampling,
            temperature=t.sampling_temperature,
            seed=self.seed,
            group_by_length=t.group_by_length,
            min_task_mix=t.min_task_mix,
        )
        steps = StepBatches(
            dataset=self.train_dataset,
            collator=self.collator,
            sampler=sampler,
            seed=self.seed,
            grad_accum=t.grad_accum,
            num_processes=acc.num_processes,
            process_index=acc.process_index,
            overfit_batches=t.overfit_batches,
        )
        return step_loader(
            steps,
            self.state.step,
            t.max_steps,
            num_workers=t.num_workers if t.num_workers is not None else (2 if acc.device.type == "cuda" else 0),
            prefetch_factor=t.prefetch_factor,
            pin_memory=acc.device.type == "cuda",
        )

    def _on_device(self, item: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """A step's micro-batches on the device (asynchronous copies from pinned memory on a GPU); the
        task ids stay on the host too (`host_task_ids`), so routing checks them there without a sync."""
        self.state.batch_tasks += item["tasks"]
        self.state.input_tokens += item["input_tokens"]
        self.state.padded_input_tokens += item["padded_input_tokens"]
        device = self.accelerator.device
        micro = []
        for batch in item["micro_batches"]:
            on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            on_device["host_task_ids"] = batch["task_ids"]
            micro.append(on_device)
        return micro

    def _n_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the loss sums over: target tokens (examples, for encoders)."""
        labels = batch["labels"]
        if self.kind == "encoder":
            return torch.tensor(labels.shape[0], device=labels.device)
        if self.kind == "causal":  # position t predicts token t + 1: the first label predicts nothing
            labels = labels[:, 1:]
        return (labels != -100).sum()

    def _summed_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the token (example, for encoders) losses of one micro-batch."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"]
        if self.kind == "encoder":
            inputs["task_ids"] = batch["task_ids"]
        elif self.kind == "seq2seq":
            inputs["decoder_input_ids"] = self.unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        with self.accelerator.autocast():
            logits = self.model(**inputs).logits
        if self.kind == "causal":  # position t predicts token t + 1 (shift the labels: no copy of the logits)
            labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )

    def _window(self, loss: float = 0.0, n: float = 0.0, aux: float = 0.0) -> torch.Tensor:
        """The logging accumulator (loss, targets, aux): float64 where the device has it, so the logged
        loss does not depend on how many micro-batches were summed."""
        dtype = torch.float32 if self.accelerator.device.type == "mps" else torch.float64
        return torch.tensor([loss, n, aux], dtype=dtype, device=self.accelerator.device)

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> LoopState:
        t, acc = self.trainer, self.accelerator
        bar = tqdm(
            total=t.max_steps,
            initial=self.state.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (t.progress_bar and acc.is_main_process),
        )
        first = acc.process_index == 0  # a restored window is the sum over processes: one of them holds it
        s = self.state
        window = self._window(s.window_loss, s.window_n, s.window_aux) if first else self._window()
        started = time.perf_counter() - self.state.train_seconds
        if t.max_steps == 0:  # a library scored as it is (init_from): one evaluation at step 0, no training
            if self.state.best_step is None:
                self._evaluate_and_checkpoint(0)
            bar.close()
            return self.state
        batches = iter(self._batch_loader())
        try:
            with stop_on_signals() as stop:
                while self.state.step < t.max_steps:
                    step_start = time.perf_counter()
                    micro_batches = self._on_device(next(batches))
                    self.state.data_seconds += time.perf_counter() - step_start
                    window = self._train_step(micro_batches, step_start, window, started, bar)
                    at_log = self.state.step % t.log_every == 0
                    if self.state.step < t.max_steps and stop.requested(acc, sync_point=at_log):
                        self._hold_window(window)
                        self._count_tokens()
                        self._checkpoint(self.output_dir / "last", with_state=True)
                        acc.wait_for_everyone()
                        bar.close()
                        raise Preempted(self.state.step, requeue=stop.requeue())
        finally:  # the workers stop now, also when a step raised (its traceback would keep them alive)
            del batches
        bar.close()
        return self.state

    def _train_step(
        self, micro_batches: list[dict[str, torch.Tensor]], step_start: float, window: torch.Tensor, started, bar
    ) -> torch.Tensor:
        """One optimizer step (which began at `step_start`, waiting for its batches), its logging and, on
        schedule, evaluation and checkpoints. `window` sums, since the last log step, the loss, its target
        count and the target-weighted load-balancing loss; it is returned, reset at log steps."""
        self._accumulate_gradients(micro_batches, window)
        self._optimizer_step()
        self.state.step_seconds += time.perf_counter() - step_start
        self.state.step += 1
        step = self.state.step
        self.state.train_seconds = time.perf_counter() - started
        if step % self.trainer.log_every == 0 or step == self.trainer.max_steps:
            self._log_window(window, step, bar)
            window = self._window()
        bar.update(1)
        self._evaluate_or_save(step, window)
        return window

    def _accumulate_gradients(self, micro_batches: list[dict[str, torch.Tensor]], window: torch.Tensor) -> None:
        """Forward and backward of each micro-batch, gradients synchronised at the last; adds to `window`."""
        acc = self.accelerator
        self.model.train()
        counts = [self._n_targets(b) for b in micro_batches]
        # the step's loss: every target token of every micro-batch and process, over their total (DDP
        # averages gradients over processes, hence the factor)
        n_step = acc.reduce(torch.stack(counts).sum().float(), reduction="sum").clamp(min=1)
        scale = acc.num_processes / n_step
        torch.manual_seed(dropout_seed(self.seed, self.state.step, acc.process_index))
        for i, batch in enumerate(micro_batches):
            self._pending_tokens += batch["attention_mask"].sum()
            if self.kind == "seq2seq":  # the decoder's tokens; causal targets are inside input_ids
                self._pending_tokens += (batch["labels"] != -100).sum()
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
            routing_start = time.perf_counter()
            routing = use_tasks(self.unwrapped, batch["host_task_ids"], noise_keys=batch["noise_keys"])
            with sync, routing:
                self.state.routing_seconds += time.perf_counter() - routing_start
                loss_sum = self._summed_loss(batch)
                # token gates' load-balancing loss, a mean over this micro-batch's tokens: weighted by its
                # targets, as its share of the step's loss is
                aux = pop_aux_loss(self.unwrapped)
                objective = loss_sum if aux is None else loss_sum + self.aux_loss_coef * counts[i] * aux
                # backward inside use_tasks: checkpointed layers recompute with the same tasks
                acc.backward(objective * scale)
            window[0] += loss_sum.detach()
            window[1] += counts[i]
            if aux is not None:
                window[2] += aux.detach() * counts[i]

    def _optimizer_step(self) -> None:
        fill_missing_grads(self.optimizer)
        if self.trainer.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.trainer.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _log_window(self, window: torch.Tensor, step: int, bar) -> None:
        """The mean loss since the last log step over every target token (example, for encoders) of all
        processes, the learning rates and the load-balancing loss; a non-finite loss stops the run."""
        self._count_tokens()
        loss, n, aux = self.accelerator.reduce(window.clone(), reduction="sum").tolist()
        mean_loss = loss / n
        metrics = {"train/loss": mean_loss, "train/step": step, **learning_rates(self.optimizer)}
        if self.aux_loss_coef:
            metrics["train/aux_loss"] = aux / n
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"training loss is {mean_loss} at step {step}; {self._last_good()}")
        self.on_log(metrics, step)
        bar.set_postfix(
            {"loss": f"{mean_loss:.4f}"}
            | {k.removeprefix("train/"): f"{v:.1e}" for k, v in learning_rates(self.optimizer).items()}
        )

    def _evaluate_or_save(self, step: int, window: torch.Tensor) -> None:
        """On schedule: evaluate dev and checkpoint (eval_every, the last step), or only save last/."""
        if step % self.trainer.eval_every == 0 or step == self.trainer.max_steps:
            self._hold_window(window)
            self._evaluate_and_checkpoint(step)
        elif self._save_due(step):
            self._hold_window(window)
            self._count_tokens()
            self._checkpoint(self.output_dir / "last", with_state=True)
            self._saved_at = time.monotonic()
            self.accelerator.wait_for_everyone()

    def _save_due(self, step: int) -> bool:
        """`trainer.save_every` steps, or `trainer.save_every_minutes` since the last checkpoint (with several
        processes decided at log steps, where they agree on it, as preemption is)."""
        t, acc = self.trainer, self.accelerator
        if t.save_every and step % t.save_every == 0:
            return True
        if not t.save_every_minutes:
            return False
        due = time.monotonic() - self._saved_at >= 60 * t.save_every_minutes
        if acc.num_processes == 1:
            return due
        if step % t.log_every:
            return False
        return bool(acc.reduce(torch.tensor(float(due), device=acc.device), reduction="sum").item() > 0)

    def _hold_window(self, window: torch.Tensor) -> None:
        """Put the loss window (summed over processes) in the state that checkpoints save."""
        total = self.accelerator.reduce(window.clone(), reduction="sum").tolist()
        self.state.window_loss, self.state.window_n, self.state.window_aux = total

    def _count_tokens(self) -> None:
        """Fold the tokens counted on the device into the state (one sync, at log and checkpoint steps)."""
        self.state.tokens += int(self.accelerator.reduce(self._pending_tokens, reduction="sum").item())
        self._pending_tokens.zero_()

    def _last_good(self) -> str:
        last = self.output_dir / "last"
        return f"{last} keeps the last good checkpoint" if last.is_dir() else "no checkpoint was written yet"

    def _evaluate_and_checkpoint(self, step: int) -> None:
        # a checkpoint never holds non-finite adapters (between log steps a loss can turn nan unseen)
        if not all(torch.isfinite(p).all() for p in self.model.parameters() if p.requires_grad):
            raise TrainingDiverged(f"non-finite adapter weights at step {step}; {self._last_good()}")
        self._count_tokens()
        evaluation = self.evaluate(self.unwrapped)
        self.state.last_scores = evaluation.scores
        value = selection_value(evaluation, self.optimized_metric)
        is_best = self.state.best_value is None or value > self.state.best_value
        if is_best:
            self.state.best_value, self.state.best_step, self.state.best_scores = value, step, evaluation.scores
            self._checkpoint(self.output_dir / "best", with_state=False)
        self.on_eval(evaluation, step, is_best)
        self._checkpoint(self.output_dir / "last", with_state=True)
        self._saved_at = time.monotonic()
        self.accelerator.wait_for_everyone()

    # -- the test split ---------------------------------------------------------------------------
    def score_test(self, evaluate: Callable[[torch.nn.Module], Evaluation]) -> dict[str, Evaluation]:
        """The test split, scored once the loop is done: `final` (the adapters of the last step) and `best`
        (`best/`'s, the step the dev split chose; the same evaluation when that is the last step). Every
        process calls it; the model ends holding the final adapters again."""
        model = self.unwrapped
        final = evaluate(model)
        if self.state.best_step is None or self.state.best_step == self.state.step:
            return {"final": final, "best": final}
        load_skill_tensors(model, self.output_dir / "best")
        try:
            best = evaluate(model)
        finally:
            load_skill_tensors(model, self.output_dir / "last")
        return {"final": final, "best": best}
