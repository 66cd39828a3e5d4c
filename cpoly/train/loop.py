"""The training loop on Hugging Face Accelerate: the same code on a CPU, one GPU or several processes.

One optimizer step = `grad_accum` micro-batches; each micro-batch is this process's share of a global
multi-task batch from `MultiTaskBatchSampler`, a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted run would. Evaluation runs every `eval_every` steps and at the
end; `last/` (adapters + trainer state) is written after every evaluation, `best/` when the optimised
metric improves.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from cpoly.config import OptimConfig, TrainerConfig
from cpoly.data.collate import Collator
from cpoly.data.sampling import MultiTaskBatchSampler
from cpoly.skills import use_tasks
from cpoly.train.checkpoint import restore_checkpoint, save_checkpoint
from cpoly.train.evaluation import Evaluation
from cpoly.train.optim import build_optimizer, build_scheduler, learning_rates, zero_grads_of_absent_task_skills

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    best_value: float | None = None
    best_step: int | None = None
    best_scores: dict[str, dict[str, float]] | None = None
    last_scores: dict[str, dict[str, float]] | None = None  # the latest evaluation
    wandb_run_id: str | None = None
    train_seconds: float = 0.0  # wall time of the loop so far, evaluations included (across resumes)
    step_seconds: float = 0.0  # wall time of the optimizer steps alone
    tokens: int = 0  # input + target tokens trained on, all processes

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
    optimized_metric: str  # e.g. "val/avg/rougeL"
    evaluate: Callable[[torch.nn.Module], Evaluation]
    on_log: Callable[[dict[str, float], int], None]
    on_eval: Callable[[Evaluation, int, bool], None]  # (evaluation, step, is_best)
    checkpoint_extra: Callable[[], dict[str, Any]] = lambda: {}
    state: LoopState = field(default_factory=LoopState)

    def __post_init__(self) -> None:
        self.optimizer = build_optimizer(self.model, self.optim)
        self.scheduler = build_scheduler(self.optimizer, self.optim, self.trainer.max_steps)
        # The scheduler is stepped by hand once per optimizer step (Accelerate would step it once per
        # process); the sampler shards batches itself, so no dataloader is prepared.
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self._pending_tokens = torch.zeros((), dtype=torch.long, device=self.accelerator.device)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # -- resume -----------------------------------------------------------------------------------
    def restore(self, directory: Path) -> None:
        state = restore_checkpoint(directory, self.unwrapped, self.optimizer.optimizer, self.scheduler)
        known = LoopState.__dataclass_fields__
        self.state = LoopState(**{k: v for k, v in state.items() if k in known})
        log.info("resumed from %s at step %d", directory, self.state.step)

    def _checkpoint(self, directory: Path, with_state: bool) -> None:
        if not self.accelerator.is_main_process:
            return
        trainer_state = dict(self.state.as_dict(), **self.checkpoint_extra()) if with_state else None
        save_checkpoint(directory, self.unwrapped, self.optimizer.optimizer, self.scheduler, trainer_state)

    # -- batches ----------------------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        t = self.trainer
        world = self.accelerator.num_processes
        sampler = MultiTaskBatchSampler(
            tasks=self.train_dataset["task_id"],
            lengths=self.train_dataset["length"],
            batch_size=t.batch_size * world,
            strategy=t.task_sampling,
            temperature=t.sampling_temperature,
            seed=self.seed,
            group_by_length=t.group_by_length,
            num_replicas=world,
            rank=self.accelerator.process_index,
        )
        start = self.state.step * t.grad_accum
        if t.overfit_batches:  # the first few batches, over and over
            first = list(itertools.islice(iter(sampler), t.overfit_batches))
            stream = (first[i % len(first)] for i in itertools.count(start))
        else:
            sampler.start_step = start
            stream = iter(sampler)
        for indices in stream:
            yield {k: v.to(self.accelerator.device) for k, v in self.collator(self.train_dataset[indices]).items()}

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, summed loss and count of what it sums, for the logs).

        Token losses are summed and divided by the number of target tokens over all processes (times
        the number of processes, which DDP's gradient averaging divides out again), so a data-parallel
        step takes the same gradient as one process on the whole global batch."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"]
        if self.kind == "encoder":
            with self.accelerator.autocast():
                loss = self.model(**inputs, task_ids=batch["task_ids"], labels=labels).loss
            n = torch.tensor(float(labels.shape[0]), device=loss.device)
            return loss, loss.detach() * n, n
        if self.kind == "seq2seq":
            inputs["decoder_input_ids"] = self.unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        with self.accelerator.autocast():
            logits = self.model(**inputs).logits
        if self.kind == "causal":  # position t predicts token t + 1 (shift the labels: no copy of the logits)
            labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        token_losses = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        n_tokens = (labels != -100).sum()
        n_global = self.accelerator.reduce(n_tokens.float(), reduction="sum").clamp(min=1)
        loss = token_losses * self.accelerator.num_processes / n_global
        return loss, token_losses.detach(), n_tokens.float()

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> LoopState:
        t, acc = self.trainer, self.accelerator
        batches = self._micro_batches()
        bar = tqdm(
            total=t.max_steps,
            initial=self.state.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (t.progress_bar and acc.is_main_process),
        )
        window_loss, window_n = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
        started = time.perf_counter() - self.state.train_seconds
        while self.state.step < t.max_steps:
            self.model.train()
            step_start = time.perf_counter()
            for _ in range(t.grad_accum):
                batch = next(batches)
                self._pending_tokens += batch["attention_mask"].sum()
                if self.kind == "seq2seq":  # the decoder's tokens; causal targets are inside input_ids
                    self._pending_tokens += (batch["labels"] != -100).sum()
                with acc.accumulate(self.model), use_tasks(self.unwrapped, batch["task_ids"]):
                    loss, loss_sum, loss_count = self._loss(batch)
                    # backward inside use_tasks: checkpointed layers recompute with the same tasks
                    acc.backward(loss)
                    if acc.sync_gradients and t.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    if acc.sync_gradients and self.optim.task_skill_updates == "dense":
                        zero_grads_of_absent_task_skills(self.unwrapped)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window_loss += loss_sum
                window_n += loss_count
            self.scheduler.step()
            self.state.step_seconds += time.perf_counter() - step_start
            self.state.step += 1
            step = self.state.step
            self.state.train_seconds = time.perf_counter() - started
            if step % t.log_every == 0 or step == t.max_steps:
                self._count_tokens()
                # the mean over every target token (example, for encoders) of all processes
                mean_loss = (acc.reduce(window_loss, reduction="sum") / acc.reduce(window_n, reduction="sum")).item()
                metrics = {"train/loss": mean_loss, "train/step": step, **learning_rates(self.optimizer)}
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"training loss is {mean_loss} at step {step}")
                self.on_log(metrics, step)
                bar.set_postfix(
                    {"loss": f"{mean_loss:.4f}"}
                    | {k.removeprefix("train/"): f"{v:.1e}" for k, v in learning_rates(self.optimizer).items()}
                )
                window_loss, window_n = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
            bar.update(1)
            if step % t.eval_every == 0 or step == t.max_steps:
                self._evaluate_and_checkpoint(step)
        bar.close()
        return self.state

    def _count_tokens(self) -> None:
        """Fold the tokens counted on the device into the state (one sync, at log and checkpoint steps)."""
        self.state.tokens += int(self.accelerator.reduce(self._pending_tokens, reduction="sum").item())
        self._pending_tokens.zero_()

    def _evaluate_and_checkpoint(self, step: int) -> None:
        self._count_tokens()
        evaluation = self.evaluate(self.unwrapped)
        self.state.last_scores = evaluation.scores
        key = self.optimized_metric.removeprefix("val/avg/")
        value = evaluation.scores["avg"][key]
        is_best = self.state.best_value is None or value > self.state.best_value
        if is_best:
            self.state.best_value, self.state.best_step, self.state.best_scores = value, step, evaluation.scores
            self._checkpoint(self.output_dir / "best", with_state=False)
        self.on_eval(evaluation, step, is_best)
        self._checkpoint(self.output_dir / "last", with_state=True)
        self.accelerator.wait_for_everyone()
