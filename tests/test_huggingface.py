"""Hugging Face Trainer integration: the penalty's gradient with gradient accumulation equals the hand-computed one
(both of the Trainer's loss-scaling paths), also under DDP in two gloo processes against the single-process full
batch, the sensitive column survives column removal and never reaches the model, the monitor's named metrics equal
per-group rates computed by hand on a tiny BERT built locally, its collapse warning, and bad arguments name
themselves."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from fairret._penalty import compute_penalty  # noqa: E402
from fairret.huggingface import FairnessMonitorCallback, FairnessTrainer, binary_head  # noqa: E402
from fairret.loss import CCdCovLoss, NormLoss  # noqa: E402
from fairret.statistic import EqualizedOdds, PositiveRate  # noqa: E402
from hf_helpers import Rows, Sequential, Tiny, TinyItems, args, tabular  # noqa: E402


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
                     attention_probs_dropout_prob=0.0, initializer_range=1.0)  # 0.02: a near-constant output
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
    mon = FairnessMonitorCallback(group_names=["sex=Female", "sex=Male"], min_group_size=1)  # 12 rows a group
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
    with pytest.raises(ValueError, match="`min_group_size` to be an int >= 0"):
        FairnessMonitorCallback(min_group_size=-1)
    assert FairnessMonitorCallback().tracker.min_group_size == 30  # the report's default
    trainer = Sequential(**kw, fairness_loss=NormLoss(PositiveRate()), sens_key="group")
    with pytest.raises(ValueError, match=r"Argument `sens_key` selects key 'group', but the batch has keys"):
        trainer.train()
    trainer = Sequential(**kw, fairness_loss=NormLoss(PositiveRate()), prediction_output="scores")
    with pytest.raises(ValueError, match=r"`prediction_output`='scores' selects nothing in the model output"):
        trainer.train()
    assert binary_head(torch.tensor([[0.2, 0.7]]), pred_as_logit=False).tolist() == [[pytest.approx(0.7)]]


# --- DDP ------------------------------------------------------------------------------------------------------------
def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two spawned processes import transformers: about a minute on two busy cores
@pytest.mark.distributed
def test_ddp_two_processes_equal_the_single_process_full_batch_step(tmp_path):
    """Two gloo processes on the CPU, the Trainer setting DDP up from the environment as under torchrun; one
    optimiser step over 8 rows, 4 per process, in one step or two accumulation steps; both loss-scaling paths
    (a mean task loss, and one normalised by num_items_in_batch, which the Trainer multiplies by the world size),
    a sum-reduced (NormLoss EO) and a row-gathered (CCdCov) global-batch loss. Every process ends with the
    parameters of the single-process step on the same rows (by hand, and the FairnessTrainer on one process with
    the full batch), and the penalty of each micro-batch is the one of all processes' rows."""
    import torch.multiprocessing as mp

    from hf_helpers import DDP_LAM, DDP_LOSSES, DDP_LR, DDP_MODELS, DDP_ROWS, ddp_data, ddp_run, ddp_worker

    mp.spawn(ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    data = ddp_data()
    assert len(ranks[0]) == len(DDP_MODELS) * len(DDP_LOSSES) * 2
    for (model_name, loss_name, steps), r0 in ranks[0].items():
        r1 = ranks[1][(model_name, loss_name, steps)]
        assert r0["world_size"] == r1["world_size"] == 2
        for name in r0["params"]:
            assert torch.equal(r0["params"][name], r1["params"][name]), name
        # each process: `steps` micro-batches of 4 // steps rows; together every row once
        assert [len(s) for s in r0["seen"]] == [len(s) for s in r1["seen"]] == [4 // steps] * steps
        assert sorted(sum(r0["seen"] + r1["seen"], [])) == list(range(DDP_ROWS))
        make, takes_labels = DDP_LOSSES[loss_name]
        ref = DDP_MODELS[model_name]()

        def step(penalty_grad_scale=1.0):
            """Parameters after one SGD step on mean over micro-batches of (mean CE + λ · penalty) of all
            processes' rows; the penalty's gradient times ``penalty_grad_scale``."""
            total, pens = 0.0, []
            for m in range(steps):
                rows = r0["seen"][m] + r1["seen"][m]
                logits = ref.lin(data["x"][rows])
                ce = torch.nn.functional.cross_entropy(logits, data["labels"][rows])
                pen = compute_penalty(make(), logits[:, 1:] - logits[:, :1], data["sens"][rows],
                                      data["labels"][rows] if takes_labels else None)
                pens.append(float(pen.detach()))
                pen = pen.detach() + penalty_grad_scale * (pen - pen.detach())
                total = total + (ce + DDP_LAM * pen) / steps
            grads = torch.autograd.grad(total, list(ref.parameters()))
            return {n: p.detach() - DDP_LR * g for (n, p), g in zip(ref.named_parameters(), grads)}, pens

        want, pens = step()
        assert r0["penalties"] == pytest.approx(pens, rel=1e-5) and r1["penalties"] == pytest.approx(pens, rel=1e-5)
        assert all(p != 0 for p in pens)  # (CCdCov², a U-statistic, may be negative on 4 rows)
        for name, value in want.items():
            torch.testing.assert_close(r0["params"][name], value, rtol=1e-5, atol=1e-6)
        # the penalty's gradient matters here: without the world-size correction (half of it) the step differs
        unscaled, _ = step(penalty_grad_scale=0.5)
        assert max((unscaled[n] - want[n]).abs().max().item() for n in want) > 1e-4
        if steps == 1:  # the FairnessTrainer on one process, all 8 rows in one batch
            single = ddp_run(str(tmp_path / "single"), model_name, loss_name, 1, DDP_ROWS, ddp=False)
            assert single["world_size"] == 1 and sorted(single["seen"][0]) == list(range(DDP_ROWS))
            for name in want:
                torch.testing.assert_close(r0["params"][name], single["params"][name], rtol=1e-5, atol=1e-6)
