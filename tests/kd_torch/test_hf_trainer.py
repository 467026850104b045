"""KDTrainer (Hugging Face Trainer + kdstream.torch) against distill and against itself: the first
step equals distill's, a killed-and-resumed run equals an uninterrupted one, and the classic
mistakes (dropped columns, another tokenizer, another store on resume) are refused up front."""
from __future__ import annotations

import pytest
import torch

from helpers import make_gpt_neox
from kdstream.errors import KdError
from kdstream.torch import KDLoss, KDTrainer, StoreDataset, collate


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer):
    return make_gpt_neox(tmp_path_factory.mktemp("hf_student"), tokenizer, layers=1, seed=5)


def _student(student_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32)


def _args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), remove_unused_columns=False, report_to=[], use_cpu=True, seed=0,
                per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, dataloader_num_workers=0,
                save_strategy="steps", save_steps=2, max_steps=4, lr_scheduler_type="constant")
    return TrainingArguments(**{**base, **kw})


@pytest.mark.parametrize("fused", [True, False])
def test_first_step_equals_distill(teacher_store, student_dir, tokenizer, tmp_path, fused):
    from kdstream.distill.fused_head import auto_chunk
    from kdstream.distill.objective import Objective

    ds = StoreDataset(teacher_store)
    batch = collate([ds[i] for i in range(4)])
    ref_net = _student(student_dir)
    ref = Objective(ref_net, loss="jsd", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.2,
                    chunk=auto_chunk(ref_net.config.vocab_size))  # what a distill step runs
    want = ref(batch["input_ids"], batch["topk_ids"], batch["topk_logprobs"])[0]
    want.backward()

    net = _student(student_dir)
    trainer = KDTrainer(model=net, args=_args(tmp_path), train_dataset=ds, processing_class=tokenizer,
                        kd_loss=KDLoss("jsd", temperature=2.0, alpha_ce=0.2), fused=fused)
    loss = trainer.compute_loss(net, batch)
    loss.backward()
    torch.testing.assert_close(loss.detach(), want.detach(), atol=1e-6, rtol=0)
    for (name, p), (_, q) in zip(net.named_parameters(), ref_net.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


class _Killed(Exception):
    pass


def test_killed_after_a_checkpoint_and_resumed_equals_uninterrupted(teacher_store, student_dir, tokenizer, tmp_path):
    from transformers import TrainerCallback

    class KillAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise _Killed  # as if the process died right after checkpoint-2 was written

    def trainer(out, **kw):
        return KDTrainer(model=_student(student_dir), args=_args(out, gradient_accumulation_steps=2),
                         train_dataset=StoreDataset(teacher_store), processing_class=tokenizer, **kw)

    whole = trainer(tmp_path / "whole")
    whole.train()
    cut = trainer(tmp_path / "cut", callbacks=[KillAfterFirstSave()])
    with pytest.raises(_Killed):
        cut.train()
    assert (tmp_path / "cut" / "checkpoint-2" / "kdstream_store.json").is_file()
    resumed = trainer(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert resumed.state.global_step == 4

    other = KDTrainer(model=_student(student_dir), args=_args(tmp_path / "cut"),
                      train_dataset=StoreDataset(teacher_store, rows=range(8)), processing_class=tokenizer)
    with pytest.raises(KdError, match="checkpoint .* trained on store .*resume with the store it started with"):
        other.train(resume_from_checkpoint=True)


def test_dropping_the_teacher_columns_is_refused(teacher_store, student_dir, tmp_path):
    with pytest.raises(KdError, match="remove_unused_columns=True would drop the teacher's topk_ids"):
        KDTrainer(model=_student(student_dir), args=_args(tmp_path, remove_unused_columns=True),
                  train_dataset=StoreDataset(teacher_store))
    with pytest.raises(KdError, match=r"pass train_dataset=kdstream.torch.StoreDataset"):
        KDTrainer(model=_student(student_dir), args=_args(tmp_path), train_dataset=[{"input_ids": torch.zeros(4)}])


def test_another_tokenizer_is_refused_before_the_first_step(teacher_store, student_dir, docs, tmp_path):
    from kdstream.text.tokenizers import train_bpe_tokenizer

    other = train_bpe_tokenizer(docs[:30], 300, tmp_path / "other")
    with pytest.raises(KdError, match="tokenizer .* differs from the store's"):
        KDTrainer(model=_student(student_dir), args=_args(tmp_path), train_dataset=StoreDataset(teacher_store),
                  processing_class=other)
