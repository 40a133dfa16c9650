"""Hugging Face Trainer integration: the penalty's gradient with gradient accumulation equals the hand-computed one
(both of the Trainer's loss-scaling paths), the sensitive column survives column removal and never reaches the
model, the monitor's named metrics equal per-group rates computed by hand on a tiny BERT built locally, and bad
arguments name themselves."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torch.utils.data import Dataset, SequentialSampler  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments  # noqa: E402

from fairret._penalty import compute_penalty  # noqa: E402
from fairret.huggingface import FairnessMonitorCallback, FairnessTrainer, binary_head  # noqa: E402
from fairret.loss import CCdCovLoss, NormLoss  # noqa: E402
from fairret.statistic import EqualizedOdds, PositiveRate  # noqa: E402


class Rows(Dataset):
    def __init__(self, tensors):
        self.t = tensors

    def __len__(self):
        return len(next(iter(self.t.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.t.items()}


def tabular(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    labels = (x[:, 0] + 0.5 * torch.randn(n, generator=g) > 0).long()
    sens = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).float()
    return {"x": x, "labels": labels, "sens": sens}


class Tiny(torch.nn.Module):
    """A two-class head with a mean cross-entropy (the Trainer divides it by the accumulation steps)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(5, 2)

    def forward(self, x, labels=None):
        logits = self.lin(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class TinyItems(Tiny):
    """The same loss normalised over the whole accumulated batch (``num_items_in_batch``): not divided again."""

    def forward(self, x, labels=None, **kwargs):
        logits = self.lin(x)
        n = kwargs.get("num_items_in_batch")
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        return {"loss": loss / n if n is not None else loss / len(labels), "logits": logits}


class Sequential(FairnessTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1,
                learning_rate=0.1, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[],
                use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.parametrize("model_cls", [Tiny, TinyItems], ids=["mean-loss", "num-items-in-batch"])
def test_gradient_accumulation_equals_hand_computed_step(tmp_path, model_cls):
    data = tabular(8)
    lam, loss_fn = 0.7, NormLoss(PositiveRate())
    model = model_cls()
    ref = copy.deepcopy(model)
    trainer = Sequential(model=model, args=args(tmp_path), train_dataset=Rows(data), fairness_loss=loss_fn, lam=lam)
    if model_cls is TinyItems and not hasattr(trainer, "model_accepts_loss_kwargs"):
        pytest.skip("transformers < 4.46 neither gives nor takes num_items_in_batch")
    assert trainer._loss_scaled_for_ga(8 if model_cls is TinyItems else None) == (model_cls is TinyItems)
    trainer.train()
    # by hand: mean over the two micro-batches of (mean CE + λ · penalty on the positive-class logit)
    total = 0.0
    for rows in (slice(0, 4), slice(4, 8)):
        logits = ref.lin(data["x"][rows])
        ce = torch.nn.functional.cross_entropy(logits, data["labels"][rows])
        pen = compute_penalty(loss_fn, logits[:, 1:] - logits[:, :1], data["sens"][rows])
        total = total + (ce + lam * pen) / 2
    grads = torch.autograd.grad(total, list(ref.parameters()))
    for p, p0, gr in zip(model.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.1 * gr, rtol=1e-5, atol=1e-6)
    assert trainer.last_penalty is not None and trainer.last_penalty > 0
    assert any("fairness_penalty" in h for h in trainer.state.log_history)


def test_lambda_zero_gives_the_plain_trainer_step(tmp_path):
    data = tabular(8)
    a, b = Tiny(), Tiny()
    Sequential(model=a, args=args(tmp_path), train_dataset=Rows(data), fairness_loss=NormLoss(PositiveRate()),
               lam=0.0).train()
    Sequential(model=b, args=args(tmp_path), train_dataset=Rows(data)).train()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def text_data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 30, (n, 6), generator=g)
    sex = torch.arange(n) % 2
    ids[:, 0] = 1 + sex  # the group is a token: predictions differ between the groups
    labels = (ids[:, 1] > 15).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "sens": torch.nn.functional.one_hot(sex, 2).float()}


def test_monitor_on_a_tiny_bert_names_groups_and_matches_hand_rates(tmp_path, capsys):
    train, val = text_data(), text_data(seed=2)
    mon = FairnessMonitorCallback(group_names=["sex=Female", "sex=Male"])
    model = tiny_bert()
    trainer = FairnessTrainer(model=model, args=args(tmp_path, max_steps=2, per_device_eval_batch_size=5),
                              train_dataset=Rows(train), eval_dataset=Rows(val),
                              fairness_loss=NormLoss(EqualizedOdds()), lam=0.3, callbacks=[mon])
    assert trainer.labels_key == "labels"  # the statistic takes labels: the Trainer's labels by default
    trainer.train()
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        prob = torch.softmax(model(input_ids=val["input_ids"], attention_mask=val["attention_mask"]).logits, 1)[:, 1]
    s, y = val["sens"].double(), val["labels"].double()
    pr = (prob.double()[:, None] * s).sum(0) / s.sum(0)
    tpr = (prob.double()[:, None] * y[:, None] * s).sum(0) / (y[:, None] * s).sum(0)
    for g, name in enumerate(["sex=Female", "sex=Male"]):
        assert metrics[f"eval_fairness/dp_relative_gap/pr/{name}"] == pytest.approx(pr[g].item(), rel=1e-5, abs=1e-6)
        assert metrics[f"eval_fairness/eo_relative_gap/tpr/{name}"] == pytest.approx(tpr[g].item(), rel=1e-5, abs=1e-6)
    overall = prob.double().mean()
    assert metrics["eval_fairness/dp_relative_gap"] == pytest.approx((pr / overall - 1).abs().max().item(), rel=1e-4,
                                                                    abs=1e-6)
    assert "eval_loss" in metrics and "eval_fairness/dcor" in metrics
    out = capsys.readouterr().out
    assert "Fairness summary (eval)" in out and "sex=Female" in out
    assert trainer.state.log_history[-1].get("eval_fairness/dp_relative_gap") is not None  # logged, not only returned


def test_monitor_warns_on_collapsed_predictions_and_not_on_valid_ones(tmp_path):
    import warnings

    from fairret._validation import CollapsedPredictionsWarning

    data = tabular(16)
    collapsed = Tiny()
    with torch.no_grad():
        collapsed.lin.weight.mul_(0.01)
        collapsed.lin.bias.copy_(torch.tensor([3.0, -3.0]))  # class 1 never wins: every row predicted negative
    mon = FairnessMonitorCallback(summary=False)
    trainer = FairnessTrainer(model=collapsed, args=args(tmp_path, per_device_eval_batch_size=5),
                              eval_dataset=Rows(data), callbacks=[mon])
    with pytest.warns(CollapsedPredictionsWarning, match=r"all 16 rows of this evaluation are predicted negative.*"
                                                         r"lower λ"):
        trainer.evaluate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedPredictionsWarning)
        mon = FairnessMonitorCallback(summary=False)
        FairnessTrainer(model=Tiny(), args=args(tmp_path, per_device_eval_batch_size=5), eval_dataset=Rows(data),
                        callbacks=[mon]).evaluate()
        assert mon.last_result is not None and mon.last_result.collapse is None


def test_list_of_sens_keys_for_ccdcov_and_monitor_alone_warns(tmp_path):
    data = tabular(8)
    data["age"] = torch.rand(8, 1)
    trainer = Sequential(model=Tiny(), args=args(tmp_path), train_dataset=Rows(data), fairness_loss=CCdCovLoss(),
                         lam=1.0, sens_key=["sens", "age"])
    trainer.train()
    assert trainer.last_penalty is not None
    mon = FairnessMonitorCallback()
    with pytest.warns(UserWarning, match="received no predictions"):
        mon.on_evaluate(None, trainer.state, trainer.control, metrics={})


def test_bad_arguments_name_themselves(tmp_path):
    kw = dict(model=Tiny(), args=args(tmp_path), train_dataset=Rows(tabular(8)))
    with pytest.raises(ValueError, match="`labels_key` is set, but the loss NormLoss takes no labels"):
        FairnessTrainer(**kw, fairness_loss=NormLoss(PositiveRate()), labels_key="labels")
    with pytest.raises(ValueError, match="linear-fractional loss NormLoss needs one"):
        FairnessTrainer(**kw, fairness_loss=NormLoss(PositiveRate()), sens_key=["a", "b"])
    with pytest.raises(ValueError, match="`lam`"):
        FairnessTrainer(**kw, fairness_loss=NormLoss(PositiveRate()), lam=-1.0)
    with pytest.raises(TypeError, match="`sens` to be a batch key"):
        FairnessMonitorCallback(sens=3)
    trainer = Sequential(**kw, fairness_loss=NormLoss(PositiveRate()), sens_key="group")
    with pytest.raises(ValueError, match=r"Argument `sens_key` selects key 'group', but the batch has keys"):
        trainer.train()
    trainer = Sequential(**kw, fairness_loss=NormLoss(PositiveRate()), prediction_output="scores")
    with pytest.raises(ValueError, match=r"`prediction_output`='scores' selects nothing in the model output"):
        trainer.train()
    assert binary_head(torch.tensor([[0.2, 0.7]]), pred_as_logit=False).tolist() == [[pytest.approx(0.7)]]
