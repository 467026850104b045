"""Train from a store inside Hugging Face ``Trainer`` (or any subclass: TRL's ``SFTTrainer``):
the KD loss as the trainer's ``compute_loss``, with the three classic mistakes made impossible.

1. ``remove_unused_columns=True`` (the Trainer's default) drops every batch key the model's
   ``forward`` does not name: the teacher's ``topk_ids`` / ``topk_logprobs`` would vanish and a
   loss that falls back to CE would train silently without the teacher. Refused at construction,
   and a batch without the teacher's columns is refused at the first step.
2. Logits misaligned with steps after a restart: the dataset is map-style and the Trainer's
   sampler replays its order on ``resume_from_checkpoint``; every checkpoint records the store's
   identity, or its content's digest for a store without one (``kdstream_store.json``), and a
   resume against another store is refused.
3. No fingerprint check between data and logits: the tokenizer (``processing_class``) and the
   model are checked against the store before the first step (``check_compatible``).

Why a subclass and not ``compute_loss_func``: the Trainer calls ``compute_loss_func(outputs,
labels, num_items_in_batch)``, which never sees the batch, so the teacher's columns cannot reach
it (TRL 1.x deprecates it for SFTTrainer and says to subclass); ``compute_loss`` sees the batch.

Loss scaling: ``KDLoss`` returns a mean over the micro-batch's positions; every example has the
store's length, so the Trainer's division by the accumulation steps gives the global-batch mean,
as a ``distill`` step computes it (``loss_is_scaled_for_ga = False``).
"""
from __future__ import annotations

import json
from pathlib import Path

from kdstream.errors import KdError
from kdstream.torch.dataset import StoreDataset, collate
from kdstream.torch.loss import KDLoss

STORE_RECORD = "kdstream_store.json"  # in each checkpoint-N folder: which store the steps read


class KDTrainerMixin:
    """Mix before a ``transformers.Trainer`` class: ``class T(KDTrainerMixin, Trainer)``.

    Extra constructor arguments: ``kd_loss`` (a KDLoss; default forward KL, T = 1) and ``fused``
    (True: the output layer and loss run chunk by chunk from the final hidden states, never
    holding the (B, L, V) logits; needs a model whose ``forward`` takes ``logits_to_keep`` and
    whose logits are ``lm_head(last hidden state)``, as GPT-NeoX, Llama, Qwen and Mistral).
    ``train_dataset`` must be a StoreDataset; ``data_collator`` defaults to ``collate``.
    """

    def __init__(self, *args, kd_loss: KDLoss | None = None, fused: bool = True, **kwargs) -> None:
        targs = kwargs.get("args", args[1] if len(args) > 1 else None)
        if targs is not None and getattr(targs, "remove_unused_columns", False):
            raise KdError("remove_unused_columns=True would drop the teacher's topk_ids / topk_logprobs from every "
                          "batch (the model's forward does not name them): pass remove_unused_columns=False in the "
                          "training arguments")
        self.kd_loss = kd_loss or KDLoss()
        self.fused = fused
        store = kwargs.get("train_dataset")
        if not isinstance(store, StoreDataset):
            raise KdError(f"train_dataset={type(store).__name__}: pass train_dataset=kdstream.torch.StoreDataset(...) "
                          "(the teacher's store), by keyword")
        model = kwargs.get("model", args[0] if args else None)
        tokenizer = kwargs.get("processing_class")
        if tokenizer is not None:  # before the Trainer builds anything: a mismatch is refused at once
            from kdstream.torch.compat import check_compatible

            check_compatible(store, tokenizer, model if hasattr(model, "config") else None)
        if self.kd_loss.kind == "ce_sampled" and not store.sampled:
            raise KdError(f"KDLoss('ce_sampled') needs a sampled store; {store.url} holds top-k lists: use forward_kl")
        self.kd_store = store
        kwargs["train_dataset"] = hf_view(store)  # TRL's trainers accept only datasets.Dataset
        kwargs.setdefault("data_collator", collate)
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps
        self.model_accepts_loss_kwargs = False  # (transformers versions without loss_is_scaled_for_ga)
        if fused and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise KdError("fused=True reads the output layer's weight outside the model's forward, where FSDP and "
                          "DeepSpeed ZeRO-3 hold only a shard of it: pass fused=False to KDTrainer")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """inputs: a ``collate`` batch, on the model's device → scalar KD loss (KDLoss)."""
        input_ids = inputs["input_ids"]  # (B, L)
        if self.fused:
            # Only the last position's logits (B, 1, V) are made by the model; the loss makes the
            # rest chunk by chunk from the final hidden states. Calling the (possibly DDP-wrapped)
            # model keeps its forward hooks; the head's gradient flows through autograd.
            out = model(input_ids=input_ids, logits_to_keep=1, output_hidden_states=True, use_cache=False)
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            loss = self.kd_loss.from_hidden(out.hidden_states[-1], head, inputs)
        else:
            out = model(input_ids=input_ids, use_cache=False)
            loss = self.kd_loss(out.logits, inputs)
        return (loss, out) if return_outputs else loss

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        dataset = self.kd_store
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                record = {"store": dataset.url, "identity": self._store_key(), "rows": len(dataset)}
                (folder / STORE_RECORD).write_text(json.dumps(record, indent=1) + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The Trainer's resume, plus a check that every weight came back. transformers 5.x saves
        some architectures under their legacy names (GPT-NeoX's output layer as ``embed_out``)
        and its resume loads the file with a plain ``load_state_dict``, which leaves those
        weights at their fresh values with only a warning: a resumed run would silently diverge.
        Then the checkpoint is reloaded through ``from_pretrained``'s name mapping, strictly."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        weights = folder / "model.safetensors"
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not weights.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            saved = set(f.keys())
        if saved == set(model.state_dict()):
            return
        from kdstream.engines.hf import load_causal_lm

        restored = load_causal_lm(folder, "float32", "cpu", cls=type(model), safetensors_only=True)
        model.load_state_dict(restored.state_dict(), strict=True)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint:
            self._check_resume(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _check_resume(self, checkpoint) -> None:
        """A resume must read the store (and rows) the checkpoint's steps read."""
        from transformers.trainer_utils import get_last_checkpoint

        folder = get_last_checkpoint(self.args.output_dir) if checkpoint is True else checkpoint
        path = Path(folder or "") / STORE_RECORD
        if folder is None or not path.is_file():
            return  # the Trainer reports a missing checkpoint itself; no record: written by another trainer
        was = json.loads(path.read_text())
        ds = self.kd_store
        if was.get("identity") != self._store_key() or was.get("rows") != len(ds):
            raise KdError(f"checkpoint {folder} trained on store {was.get('store')} (identity "
                          f"{str(was.get('identity'))[:28]}, {was.get('rows')} rows), not {ds.url} (identity "
                          f"{self._store_key()[:28]}, {len(ds)} rows): resume with the store it started with")

    def _store_key(self) -> str:
        """The store's identity, or the digest of its content when it has none (storage/content.py),
        computed once: what a checkpoint records and a resume compares, never the path."""
        if getattr(self, "_kd_store_key", None) is None:
            from kdstream.storage.content import store_key

            self._kd_store_key = store_key(self.kd_store.store)
        return self._kd_store_key


def hf_view(store: StoreDataset):
    """``store`` as a ``datasets.Dataset`` without copying: one column of positions 0..n-1 and a
    transform that reads those examples from the store (batched: the DataLoader's
    ``__getitems__`` becomes one StoreDataset.__getitems__ call). TRL's trainers refuse other
    dataset types; the Hugging Face Trainer takes it as it takes any ``datasets.Dataset``."""
    import datasets

    def read(batch: dict) -> dict:  # {"position": [i, ...]} → {key: [tensor, ...]}
        rows = store.__getitems__(batch["position"])
        return {k: [r[k] for r in rows] for k in store.keys}

    view = datasets.Dataset.from_dict({"position": list(range(len(store)))})
    view.set_transform(read)
    return view


def kd_trainer(trainer_class: type) -> type:
    """``trainer_class`` (Trainer, SFTTrainer, …) with the KD loss: ``KDTrainerMixin`` mixed in."""
    return type(f"KD{trainer_class.__name__}", (KDTrainerMixin, trainer_class), {})


def __getattr__(name: str):
    if name == "KDTrainer":  # transformers.Trainer is imported on first use (seconds), not at import
        from transformers import Trainer

        cls = kd_trainer(Trainer)
        cls.__name__ = cls.__qualname__ = "KDTrainer"
        cls.__module__ = __name__
        globals()["KDTrainer"] = cls
        return cls
    raise AttributeError(name)
