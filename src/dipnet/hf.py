"""DIPNet for Hugging Face models: `DIPTrainer`, PEFT-aware projection, generation helpers.

``import dipnet`` needs only torch; this module imports ``transformers`` (and ``peft`` where
used) when it is imported itself::

    from dipnet.hf import DIPTrainer, project_model, generate
    model = project_model(model, dipnet.DIPConfig(placement="blocks"))   # after get_peft_model
    trainer = DIPTrainer(model=model, args=args, train_dataset=ds, data_collator=collate)
    trainer.train(); trainer.save_model("out")          # writes out/dip_projections.safetensors
    ids = generate(model, **batch, max_new_tokens=32)   # deterministic (projections off)

Design notes (why it looks like this):
- The loss reuses ``Trainer.compute_loss`` on the batch repeated m times along axis 0, so
  what transformers does for the NLL stays as it is: the model's own label shift for causal
  LMs, ``-100`` positions ignored, label smoothing and ``compute_loss_func``.
- Gradient accumulation: every part is normalised over the whole accumulated batch, so k
  micro-batches give the gradient of one batch k times larger, on every path. The Trainer counts
  the labels of the accumulated batch (``num_items_in_batch``; DIPTrainer counts them for every
  model, not only those whose forward takes loss kwargs). The model's own loss is taken as a mean
  over its micro-batch and rescaled by (micro-batch count / accumulated count), because many
  models accept ``num_items_in_batch`` and ignore it (``BertForSequenceClassification``);
  ``compute_loss_func`` and the label smoother get ``num_items_in_batch * m`` (m copies hold m
  times the items, so the sum becomes a mean over trajectories). The stability term's sum over
  counted positions is divided by the same count. Where the Trainer then divides the loss by the
  accumulation steps itself, DIPTrainer multiplies by them first.
- The barrier is a prior over all weights, counted once per optimizer step: it is divided by
  the training-set size N (ELBO scaling, the default) and split evenly over the micro-batches.
- In eval mode (``Trainer.evaluate``/``predict``) the projections are off and the loss is the
  plain model loss: the deterministic prediction of the paper's Algorithm 3.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator, Mapping

import torch
from torch import nn
try:
    from transformers import Trainer
except ModuleNotFoundError as err:  # one line naming the extra, not a traceback into transformers
    if err.name != "transformers":
        raise
    raise ModuleNotFoundError("dipnet.hf needs transformers, which is not installed: "
                              "pip install 'dipnet[hf]'", name=err.name) from None

from dipnet import noise
from dipnet.config import DIPConfig
from dipnet.errors import UserError
from dipnet.inject import (
    _CONFIG_ATTR,
    deterministic,
    get_config,
    load_projections,
    project,
    projections,
    sampling,
    save_projections,
    train_variances_as_configured,
    variance_parameters,
)
from dipnet.inject import unwrap as _unwrap
from dipnet.objective import (
    batch_size_of,
    check_copies_fit,
    counted_positions,
    dip_terms,
    repeat_batch,
    shifts_labels,
    stability,
)
from dipnet.peft_merge import merge_and_unload  # noqa: F401  (dipnet.hf.merge_and_unload)

PROJECTIONS_FILE = "dip_projections.safetensors"

# Modules inside a PEFT LoRA layer. With placement="layers" the LoRA layer itself is projected
# (its base layer and its adapter then see the same sample of the input), never these.
_LORA_INNER = r"(.*\.)?(base_layer|lora_A|lora_B|lora_dropout|lora_embedding_A|lora_embedding_B)(\..*)?"


def is_peft_model(model: nn.Module) -> bool:
    """True if ``model`` is a ``peft.PeftModel`` (checked without importing peft)."""
    return any(c.__name__ == "PeftModel" for c in type(_unwrap(model)).__mro__)


def project_model(model: nn.Module, config: DIPConfig | None = None) -> nn.Module:
    """Project a Hugging Face model (plain or PEFT), in place, with transformer defaults.

    Differences from `dipnet.project`: the default placement is ``"blocks"`` (the residual
    stream before each encoder/decoder block); on a PEFT model with ``placement="layers"`` each
    LoRA layer is projected as a whole (not its ``base_layer`` and ``lora_A`` separately, which
    would give the frozen path and the adapter two different noise samples of one input); and
    the variances are made trainable even where PEFT froze every non-adapter parameter.

    Args:
        model: a ``transformers.PreTrainedModel`` or a ``peft.PeftModel``. Apply LoRA first,
            then project (projecting first also works for ``"blocks"``/``"input"``).
        config: the `DIPConfig`; default ``DIPConfig(placement="blocks")``.
    Returns:
        ``model``.
    Raises:
        TargetError / AlreadyProjectedError: as `dipnet.project`.
    """
    config = config if config is not None else DIPConfig(placement="blocks")
    if config.placement == "layers" and is_peft_model(model):
        from peft.tuners.lora import LoraLayer  # peft is present: the model is a PeftModel

        excl = config.exclude_modules
        if isinstance(excl, list):
            excl = "|".join(rf"(.*\.)?{re.escape(e)}" for e in excl)
        exclude = _LORA_INNER if not excl else f"(?:{_LORA_INNER})|(?:{excl})"
        inner = DIPConfig.from_dict({**config.to_dict(), "exclude_modules": exclude,
                                     "target_types": list(config.target_types or []) or None})
        inner.target_types = list(config.target_types or []) + [LoraLayer]
        project(model, inner)
        object.__setattr__(model, _CONFIG_ATTR, config)  # save_projections records the user's config
    else:
        project(model, config)
    # PEFT froze every non-adapter parameter; the variances follow the config.
    train_variances_as_configured(model, config)
    return model


def masked_stability(outputs: torch.Tensor, labels: torch.Tensor | None, causal: bool
                     ) -> torch.Tensor:
    """The stability term on logits of shape (m, B, ...), ignoring positions labelled -100.

    The core definition (`dipnet.stability` with `dipnet.token_mask`): the unbiased variance
    over the m trajectories, summed over classes / vocabulary, averaged over the positions whose
    target is not -100 (for a causal LM position t counts when label t+1 does). Labels that do
    not match the logits' positions count every position.

    Returns:
        A scalar tensor; 0 when m < 2 or no position counts.
    """
    return stability(outputs, counted_positions(labels, outputs, causal))


class DIPTrainer(Trainer):
    """A `transformers.Trainer` that trains a DIPNet-projected model with the DIPNet objective.

    Per training step: the batch is repeated m times along axis 0 (one forward pass, each copy
    with its own noise), the NLL is the model's own loss averaged over trajectories, and the
    barrier (and, for gamma > 0, the stability penalty) is added. Each part is logged with the
    Trainer's ``loss`` as ``dip_nll``, ``dip_barrier``, ``dip_stability``, ``dip_variance_mean``.
    ``save_model`` (and every checkpoint) also writes ``dip_projections.safetensors``; resuming
    from a checkpoint reloads it.

    Args:
        dip_config: the objective's config; default: the config the model was projected with.
        num_train: training-set size N for the ELBO barrier scaling; default
            ``len(train_dataset)``.
        variance_lr: learning rate of the variance parameters' own group; default the config's
            ``variance_lr`` (and the Trainer's learning rate if that is None too).
        *args, **kwargs: as ``transformers.Trainer``.
    Raises:
        UserError: if the model holds no projections, or N cannot be determined.
    """

    def __init__(self, *args: Any, dip_config: DIPConfig | None = None,
                 num_train: int | None = None, variance_lr: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.model
        if not projections(model):
            raise UserError("DIPTrainer got a model without DIPNet projections; call "
                            "dipnet.hf.project_model(model, DIPConfig(...)) first.")
        self.dip_config = dip_config or get_config(model) or DIPConfig(placement="blocks")
        if self.dip_config.chunks > 1:
            raise UserError(f"DIPTrainer runs the m trajectories in one pass; DIPConfig.chunks="
                            f"{self.dip_config.chunks} applies to dipnet.DIPLoss only. Set "
                            "chunks=1 and lower per_device_train_batch_size (raise "
                            "gradient_accumulation_steps to keep the batch) to save memory.")
        if self.args.torch_compile:
            # The Trainer compiles the model (TrainingArguments.torch_compile); the projections
            # then draw with ATen's random ops, several times faster than inductor's on a CPU.
            noise.prepare_compile()
        if num_train is None and self.train_dataset is not None:
            try:
                num_train = len(self.train_dataset)  # type: ignore[arg-type]
            except TypeError:
                num_train = None
        if self.dip_config.barrier_scaling == "elbo" and not num_train:
            raise UserError("DIPTrainer needs the training-set size for the ELBO barrier: pass "
                            "num_train=N (e.g. an IterableDataset has no len).")
        self.num_train = num_train
        self.variance_lr = variance_lr if variance_lr is not None else \
            self.dip_config.variance_lr
        # PEFT froze every non-adapter parameter; the variances learn when the config says so
        # (never a frozen arm's: that would make the fixed-noise control learn).
        train_variances_as_configured(model, self.dip_config)
        self._causal = shifts_labels(model)
        # The Trainer counts num_items_in_batch over labels[..., 1:] only for models whose
        # loss_type it maps to the causal-LM loss (GPT-2 has none); count the way the model's
        # loss and the stability mask do, so the three agree.
        self._loss_shifts_labels = self._causal
        self._dip_sums: dict[str, float] = {}
        self._dip_count = 0
        self._calibration_checked = False

    # ------------------------------------------------------------------ optimizer
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """As the Trainer, minus the variances: weight decay would pull raw to 0."""
        names = super().get_decay_parameter_names(model)
        return [n for n in names if ".dip_projection." not in n and not n.startswith(
            "dip_projection.")]

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer; the variances get their own group if ``variance_lr`` is set."""
        optimizer = super().create_optimizer(model) if model is not None else \
            super().create_optimizer()
        learned = [p for p in variance_parameters(self.model) if p.requires_grad]
        if self.variance_lr is not None and learned:
            var_ids = {id(p) for p in learned}
            moved: list[torch.nn.Parameter] = []
            for group in optimizer.param_groups:
                keep = [p for p in group["params"] if id(p) not in var_ids]
                moved += [p for p in group["params"] if id(p) in var_ids]
                group["params"] = keep
            optimizer.add_param_group({"params": moved, "lr": self.variance_lr,
                                       "weight_decay": 0.0})
        missing = [p for p in learned
                   if not any(p is q for g in optimizer.param_groups for q in g["params"])]
        if missing:
            raise UserError(f"{len(missing)} learned DIPNet variance parameters are not in the "
                            "optimizer; leave them requires_grad=True (project_model does this "
                            "when DIPConfig.learn_variance is True).")
        return optimizer

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The DIPNet loss in training, the plain model loss in eval (projections off).

        Same signature and return as ``Trainer.compute_loss`` (transformers 5.x). Under
        gradient accumulation the NLL, the barrier and the stability term of the micro-batches
        add up to their values on the whole accumulated batch, whichever way the Trainer
        normalises the loss (see the module notes).
        """
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if self.dip_config.relative_init and not self._calibration_checked:
            # DIPConfig.init_scale: the first training batch sets each variance relative to
            # its layer's activation scale (never a model whose variances were trained).
            from dipnet.monitor import maybe_calibrate

            maybe_calibrate(_unwrap(model), dict(inputs), self.dip_config)
            self._calibration_checked = True
        if torch.compiler.is_compiling():
            return self._dip_loss(model, inputs, return_outputs, num_items_in_batch)
        # The trajectories draw the noise DIPLoss draws for the same seed (dipnet.noise).
        with noise.trajectories(noise.new_seed(), 0, self.dip_config.m):
            return self._dip_loss(model, inputs, return_outputs, num_items_in_batch)

    def _dip_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool,
                  num_items_in_batch: torch.Tensor | int | None) -> Any:
        config = self.dip_config
        m = config.m
        b = batch_size_of(inputs)
        check_copies_fit(inputs, m, f"DIPTrainer with m={m}",
                         "lower DIPConfig.m or per_device_train_batch_size")
        stacked = repeat_batch(dict(inputs), m, b)
        ga = self._ga_steps
        n_total = num_items_in_batch  # counted labels of the whole accumulated batch
        own_loss = self.compute_loss_func is None and self.label_smoother is None
        n_micro = self._count_items(inputs) if n_total is not None and own_loss else None
        if n_micro is not None and int(n_micro) > 0:
            # The model's own loss is a mean over this micro-batch's counted labels (whatever
            # it does with num_items_in_batch: BertForSequenceClassification ignores it);
            # its share of the accumulated batch is mean * n_micro / n_total.
            mean_nll, outputs = super().compute_loss(model, stacked, return_outputs=True,
                                                     num_items_in_batch=None)
            nll = mean_nll * (n_micro / n_total) * self._items_scale(applied_by_trainer=False)
            scaled = True
        elif n_total is not None:
            # compute_loss_func / the label smoother normalise by num_items_in_batch; m copies
            # hold m times the items, so the sum over them becomes a mean over trajectories.
            nll, outputs = super().compute_loss(model, stacked, return_outputs=True,
                                                num_items_in_batch=n_total * m)
            nll = nll * self._items_scale(applied_by_trainer=self._trainer_scales_items())
            scaled = True
        else:
            nll, outputs = super().compute_loss(model, stacked, return_outputs=True,
                                                num_items_in_batch=None)
            scaled = False
        if config.gamma > 0 and m > 1:
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
            logits = logits.reshape(m, b, *logits.shape[1:])
            mask = counted_positions(inputs.get("labels"), logits, self._causal)
        else:
            logits, mask = nll.new_zeros((m, b)), None  # not read without a stability term
        # Normalised over the accumulated batch (scaled): the once-per-step barrier is split
        # over the micro-batches, and the stability sum is divided by the accumulated count
        # (times the processes, as the NLL; see _items_scale).
        parts = dip_terms(
            model, nll, logits, config, self.num_train, mask,
            micro_batches=ga if scaled else 1,
            stability_count=(n_total / self._items_scale(applied_by_trainer=False)
                             if scaled else None))
        total = parts.total
        divides = not self._trainer_treats_as_scaled(num_items_in_batch)
        if scaled and divides:
            total = total * ga  # training_step divides by the accumulation steps: undo it
        elif not scaled and not divides:
            total = total / ga  # per-micro-batch means that the Trainer will not divide
        # Log per-optimizer-step values.
        self._record(nll * ga if scaled else nll, parts.barrier, parts.stability, model)
        return (total, outputs) if return_outputs else total

    def _count_items(self, inputs: Mapping[str, Any]) -> torch.Tensor | None:
        # The labels this micro-batch contributes to num_items_in_batch, by the Trainer's rule.
        labels = inputs.get("shift_labels")
        if labels is None:
            labels = inputs.get("labels")
            if isinstance(labels, torch.Tensor) and self._loss_shifts_labels:
                labels = labels[..., 1:]
        if not isinstance(labels, torch.Tensor):
            return None
        return labels.ne(-100).sum()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        # Count the labels of the accumulated batch even for a model whose forward takes no
        # loss kwargs (the Trainer counts only for those that do): the DIPNet loss normalises
        # its NLL and stability over the whole accumulated batch itself.
        accepts = self.model_accepts_loss_kwargs
        self.model_accepts_loss_kwargs = True
        try:
            return super()._get_num_items_in_batch(batch_samples, device)
        finally:
            self.model_accepts_loss_kwargs = accepts

    @property
    def _ga_steps(self) -> int:
        # Set by Trainer.train per accumulation window (the last one may be shorter).
        return int(getattr(self, "current_gradient_accumulation_steps", 1) or 1)

    def _trainer_treats_as_scaled(self, num_items_in_batch: Any) -> bool:
        # Mirrors Trainer.training_step: False means it divides the loss by the accumulation
        # steps.
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def _trainer_scales_items(self) -> bool:
        # Trainer.compute_loss multiplies a num_items-normalised loss by the number of processes
        # (DDP averages gradients) only on these paths.
        return bool(self.model_accepts_loss_kwargs or self.compute_loss_func)

    def _items_scale(self, applied_by_trainer: bool) -> float:
        # A loss normalised by the token count of ALL processes must be multiplied by their
        # number, since DDP averages the gradients; as Trainer.compute_loss does.
        if not self.args.average_tokens_across_devices or applied_by_trainer:
            return 1.0
        if self.args.n_gpu > 1:
            return float(self.args.n_gpu)
        tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
        return float(self.accelerator.num_processes // tp)

    def _record(self, nll: torch.Tensor, bar: torch.Tensor, stab: torch.Tensor,
                model: nn.Module) -> None:
        with torch.no_grad():
            var = torch.cat([p.variance.detach().float() for p in projections(model).values()])
            parts = {"dip_nll": float(nll.detach()), "dip_barrier": float(bar.detach()),
                     "dip_stability": float(stab.detach()),
                     "dip_variance_mean": float(var.mean())}
        for k, v in parts.items():
            self._dip_sums[k] = self._dip_sums.get(k, 0.0) + v
        self._dip_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, plus the mean of each DIPNet loss part since the last log."""
        if "loss" in logs and self._dip_count:
            for k, v in self._dip_sums.items():
                logs[k] = round(v / self._dip_count, 6)
            self._dip_sums, self._dip_count = {}, 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving / loading
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model as the Trainer does, plus its projections in ``dip_projections.safetensors``."""
        super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            # The same layout as dipnet.save_pretrained: dipnet_config.json beside
            # dip_projections.safetensors (the Trainer has already written the weights).
            from dipnet.pretrained import save_pretrained

            save_pretrained(_unwrap(self.model), output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None
                              ) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
        if os.path.isfile(path):
            load_projections(_unwrap(model if model is not None else self.model), path)

    def save_projections(self, path: str | os.PathLike) -> None:
        """Save only the projections (variances and config) to ``path`` (atomic)."""
        save_projections(_unwrap(self.model), path)

    def load_projections(self, path: str | os.PathLike) -> None:
        """Load projections from a file or from a directory written by ``save_model``."""
        load_projections_from(_unwrap(self.model), path)


def load_projections_from(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load projections into ``model`` from a file, or a directory holding ``dip_projections.safetensors``.

    A model without projections is projected with the saved config first, so a fresh
    ``from_pretrained`` (or ``PeftModel.from_pretrained``) model plus this call restores a
    trained DIPNet. Returns ``model``.

    Raises:
        ProjectionFileError: if the file is missing or does not fit the model.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, PROJECTIONS_FILE)
    if not projections(model) and os.path.isfile(path):
        # Project the way project_model does (it differs from dipnet.project on PEFT models),
        # so the file's layout matches.
        import json

        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                saved = json.loads((f.metadata() or {}).get("config", "null"))
        except Exception:  # a damaged file: load_projections below reports it clearly
            saved = None
        if isinstance(saved, dict):
            project_model(model, DIPConfig.from_dict(saved))
    load_projections(model, path)
    train_variances_as_configured(model)
    return model


# ---------------------------------------------------------------------- generation
@contextlib.contextmanager
def prediction_mode(model: nn.Module, sample: bool = False) -> Iterator[nn.Module]:
    """Eval mode with projections off (``sample=False``) or sampling (``sample=True``).

    The model's train/eval mode is restored afterwards. A model without projections is only
    switched to eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        if not projections(model):
            yield model
        elif sample:
            with sampling(model):
                yield model
        else:
            with deterministic(model):
                yield model
    finally:
        model.train(was_training)


def generate(model: nn.Module, *args: Any, sample_projections: bool = False,
             **kwargs: Any) -> torch.Tensor:
    """``model.generate(...)`` with the projections off (default) or sampling.

    Deterministic generation is the paper's recommended mode for LLMs (one pass, no noise);
    ``sample_projections=True`` draws fresh noise at every decoding step.

    Returns:
        What ``model.generate`` returns (token ids).
    """
    with prediction_mode(model, sample=sample_projections), torch.no_grad():
        return model.generate(*args, **kwargs)
