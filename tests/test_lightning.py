"""Lightning callbacks: the penalty's gradients equal the hand-added ones (plain, accumulation, AMP, DDP), the
monitor's values equal the metrics on the whole split, λ schedules, checkpoint resume, YAML configs, bad configs."""
from __future__ import annotations

import copy
import glob
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")


from fairret.lightning import FairnessMonitor, FairnessRegularizer, LambdaSchedule  # noqa: E402
from fairret.lightning.examples import TabularClassifier, TabularDataModule  # noqa: E402
from fairret.loss import CCdCovLoss, NormLoss  # noqa: E402
from fairret.metric import IntersectionalJSD, LinearFractionalParity  # noqa: E402
from fairret.statistic import EqualizedOdds, PositiveRate, TruePositiveRate  # noqa: E402
from lightning_helpers import GradRecorder, Net, loader, make_data, precisions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def trainer(**kw):
    base = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                accelerator="cpu", devices=1, num_sanity_val_steps=0)
    base.update(kw)
    return pl.Trainer(**base)


def grads_of(module, callbacks, dl=None, **kw):
    rec = GradRecorder()
    t = trainer(callbacks=[*callbacks, rec], **kw)
    t.fit(module, dl if dl is not None else loader())
    return rec.grads


def assert_grads_equal(a, b, rtol=1e-6, atol=1e-7):
    assert len(a) == len(b) and len(a) > 0
    for ga, gb in zip(a, b):
        assert ga.keys() == gb.keys()
        for k in ga:
            torch.testing.assert_close(ga[k], gb[k], rtol=rtol, atol=atol, msg=k)


# --- gradients: callback == penalty added by hand in training_step -------------------------------------------------
def _eo_loss():
    return NormLoss(EqualizedOdds(), p=2)


PRECISIONS = precisions()


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_equal_hand_added_penalty(precision, accumulate):
    kw = dict(max_steps=2, accumulate_grad_batches=accumulate, **PRECISIONS[precision])
    reg = FairnessRegularizer(_eo_loss(), lam=0.7, sens="sens", labels="y")
    with_cb = grads_of(Net(), [reg], **kw)
    by_hand = grads_of(Net(by_hand=_eo_loss(), lam=0.7, labels=True), [], **kw)
    without = grads_of(Net(), [], **kw)
    assert_grads_equal(with_cb, by_hand)
    assert len(with_cb) == 2
    # the penalty changes the gradient (the test could otherwise pass with a callback that does nothing)
    diff = max((with_cb[0][k] - without[0][k]).abs().max().item() for k in with_cb[0])
    assert diff > 1e-4


def test_gradient_equals_plain_torch_with_accumulation():
    """Independent of Lightning: the accumulated gradient is the mean of the two micro-batch gradients."""
    lam = 0.7
    reg = FairnessRegularizer(NormLoss(TruePositiveRate()), lam=lam, sens="sens", labels="y",
                              prediction_module="net")
    got = grads_of(Net(), [reg], max_steps=1, accumulate_grad_batches=2)[0]
    model = Net()
    data = make_data()
    penalty = NormLoss(TruePositiveRate())
    total = 0
    for sl in (slice(0, 16), slice(16, 32)):
        logits = model(data["x"][sl])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), data["y"][sl])
        total = total + 0.5 * (bce + lam * penalty(logits, data["sens"][sl], data["y"][sl]))
    total.backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    assert_grads_equal([got], [expected])


def test_ccdcov_list_sens_and_tuple_output():
    loss = CCdCovLoss(weights=[1.0, 2.0])
    reg = FairnessRegularizer(loss, lam=3.0, sens=["sens", "age"], prediction_output=0)
    with_cb = grads_of(Net(tuple_out=True), [reg], max_steps=2, accumulate_grad_batches=2)
    by_hand = grads_of(Net(by_hand=CCdCovLoss(weights=[1.0, 2.0]), lam=3.0, sens=["sens", "age"], tuple_out=True),
                       [], max_steps=2, accumulate_grad_batches=2)
    assert_grads_equal(with_cb, by_hand)


def test_logs_penalty_and_lambda_and_restores_module():
    module = Net()
    reg = FairnessRegularizer(NormLoss(PositiveRate()), lam=0.25, sens="sens")
    t = trainer(callbacks=[reg], max_steps=3)
    t.fit(module, loader())
    assert t.callback_metrics["train/fairness/lam"].item() == 0.25
    assert torch.isclose(t.callback_metrics["train/fairness/penalty_step"], reg.last_penalty.float())
    assert "training_step" not in module.__dict__  # unwrapped at teardown


def test_lambda_zero_logs_but_does_not_change_gradients():
    reg = FairnessRegularizer(NormLoss(PositiveRate()), lam=0.0, sens="sens")
    assert_grads_equal(grads_of(Net(), [reg], max_steps=2), grads_of(Net(), [], max_steps=2))
    assert reg.last_penalty is not None and reg.last_penalty > 0


# --- DDP ------------------------------------------------------------------------------------------------------------
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["normloss", "ccdcov"])
def test_ddp_spawn_gradients_equal_single_process_full_batch(tmp_path, kind):
    def make():
        if kind == "normloss":
            return FairnessRegularizer(_eo_loss(), lam=0.7, sens="sens", labels="y")
        return FairnessRegularizer(CCdCovLoss(), lam=3.0, sens=["sens", "age"])

    # single process, the full batch of 64 rows in one step
    single = grads_of(Net(), [make()], dl=loader(batch_size=64), max_steps=1)[0]
    # two ranks, 32 rows each (Lightning's DistributedSampler interleaves the rows), one step
    rec = GradRecorder(str(tmp_path))
    t = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, callbacks=[make(), rec])
    t.fit(Net(), loader(batch_size=32))
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for k in single:
        assert torch.equal(r0["grads"][0][k], r1["grads"][0][k]), k  # identical on both ranks
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert_grads_equal(r0["grads"], [single], rtol=1e-5, atol=1e-6)


# --- monitor --------------------------------------------------------------------------------------------------------
class FigureSink:
    def __init__(self):
        self.figures = []

    def add_figure(self, tag, fig, global_step=None):
        self.figures.append(tag)


class FigureLogger(pl.loggers.logger.Logger):
    def __init__(self):
        super().__init__()
        self.sink = FigureSink()
        self.metrics = {}

    @property
    def name(self):
        return "fig"

    @property
    def version(self):
        return 0

    @property
    def experiment(self):
        return self.sink

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)


def test_monitor_values_equal_metrics_on_the_whole_split():
    pytest.importorskip("matplotlib")
    module = Net()
    # every group compared (about 21 rows each here), as the metrics below compare them
    mon = FairnessMonitor(sens="sens", labels="y", cells="cells", min_group_size=1)
    logger = FigureLogger()
    t = trainer(callbacks=[mon], max_epochs=1, logger=logger)
    t.fit(module, loader(), loader(seed=9))
    # recompute on the whole validation split, in one go
    data = make_data(seed=9)
    with torch.no_grad():
        prob = torch.sigmoid(module(data["x"]))
    dp = LinearFractionalParity(PositiveRate(), 3)
    dp.update(prob, data["sens"])
    eo = LinearFractionalParity(EqualizedOdds(), (2, 3))
    eo.update(prob, data["sens"], data["y"])
    jsd = IntersectionalJSD()
    jsd.update(prob.squeeze(1), data["cells"])
    m = t.callback_metrics
    # gaps are differences of float32 rates near 0.5 summed batch by batch: compare with an absolute tolerance too
    # (a few ulps of the rates), or cancellation makes the relative one flaky
    assert m["val/fairness/dp_relative_gap"].item() == pytest.approx(dp.compute().item(), rel=1e-5, abs=1e-6)
    assert m["val/fairness/eo_relative_gap"].item() == pytest.approx(eo.compute().max().item(), rel=1e-5, abs=1e-6)
    assert m["val/fairness/jsd"].item() == pytest.approx(jsd.compute().item(), rel=1e-5, abs=1e-6)
    per_group = dp.compute_per_group().reshape(-1)
    assert m["val/fairness/dp_relative_gap/pr/group_1"].item() == pytest.approx(per_group[1].item(), rel=1e-5,
                                                                                abs=1e-6)
    tpr_gap = LinearFractionalParity(TruePositiveRate(), 3)
    tpr_gap.update(prob, data["sens"], data["y"])
    assert m["val/fairness/eo_relative_gap/tpr"].item() == pytest.approx(tpr_gap.compute().item(), rel=1e-5, abs=1e-6)
    assert "val/fairness/dcor" in m
    assert any(tag == "val/fairness/dp_relative_gap" for tag in logger.sink.figures)
    t.test(module, loader(seed=9))
    assert t.callback_metrics["test/fairness/dp_relative_gap"].item() == pytest.approx(dp.compute().item(), rel=1e-5,
                                                                                       abs=1e-6)


def test_monitor_custom_metrics_and_submodule():
    from torchmetrics.classification import BinaryAccuracy

    from fairret.metric import CCdCov

    mon = FairnessMonitor(metrics={"acc": BinaryAccuracy(), "ccdcov": CCdCov()}, sens="sens", labels="y",
                          attributes=["sens", "age"], prediction_module="net", stages=["validate"])
    module = Net()
    t = trainer(callbacks=[mon], max_epochs=1)
    t.fit(module, loader(), loader(seed=9))
    data = make_data(seed=9)
    with torch.no_grad():
        prob = torch.sigmoid(module(data["x"]))
    ref = CCdCov()
    ref.update(prob, torch.cat([data["sens"], data["age"]], 1))
    assert t.callback_metrics["val/fairness/ccdcov"].item() == pytest.approx(ref.compute().item(), rel=1e-5)
    assert t.callback_metrics["val/fairness/acc"].item() == pytest.approx(
        ((prob.squeeze(1) > 0.5).float() == data["y"]).float().mean().item())


# --- λ schedule -----------------------------------------------------------------------------------------------------
def test_schedule_ramp_sets_lambda_per_step():
    reg = FairnessRegularizer(NormLoss(PositiveRate()), lam=0.0, sens="sens")
    sched = LambdaSchedule(lam=2.0, warmup_steps=1, ramp_steps=2, ramp="linear")
    seen = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(reg.lam)

    trainer(callbacks=[reg, sched, Spy()], max_steps=4).fit(Net(), loader())
    assert seen == [0.0, 1.0, 2.0, 2.0]
    assert LambdaSchedule(lam=1.0, warmup_steps=0, ramp_steps=4, ramp="cosine").lam_at(1) == pytest.approx(0.5)


def test_schedule_target_mode_moves_lambda_toward_target():
    reg = FairnessRegularizer(NormLoss(PositiveRate()), lam=1.0, sens="sens")
    mon = FairnessMonitor(sens="sens", cells="cells")
    sched = LambdaSchedule(lam=1.0, target_jsd=1e-9, gain=0.5, lam_max=50.0)
    trainer(callbacks=[reg, mon, sched], max_epochs=2).fit(Net(), loader(), loader(seed=9))
    h = sched.history
    assert len(h) == 2
    # λ_{k+1} = λ_k (JSD_k / target)^gain, clipped
    expected = min(50.0, h[0]["lam"] * (h[0]["jsd"] / 1e-9) ** 0.5)
    assert h[1]["lam"] == pytest.approx(expected)
    assert sched.base_lam > 1.0  # the JSD was above the (tiny) target: λ grew


# --- checkpoint resume ----------------------------------------------------------------------------------------------
def _resume_callbacks():
    reg = FairnessRegularizer(NormLoss(PositiveRate(), momentum=0.3), lam=1.0, sens="sens")
    mon = FairnessMonitor(sens="sens", labels="y", cells="cells")
    sched = LambdaSchedule(lam=0.5, warmup_steps=2, target_jsd=1e-3, gain=0.5)
    return [reg, mon, sched]


def test_checkpoint_resume_continues_exactly(tmp_path):
    def dm():
        return TabularDataModule("synthetic", n_synthetic=480, batch_size=64, seed=1)

    def model():
        torch.manual_seed(0)
        return TabularClassifier(num_features=6, hidden=(8,))

    straight_cbs = _resume_callbacks()
    straight = model()
    trainer(callbacks=straight_cbs, max_epochs=3).fit(straight, dm())

    first_cbs = _resume_callbacks()
    first = model()
    t1 = trainer(callbacks=first_cbs, max_epochs=1)
    t1.fit(first, dm())
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)

    resumed_cbs = _resume_callbacks()
    resumed = model()
    trainer(callbacks=resumed_cbs, max_epochs=3).fit(resumed, dm(), ckpt_path=str(ckpt))

    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert resumed_cbs[0].lam == straight_cbs[0].lam
    torch.testing.assert_close(resumed_cbs[0].loss.running_denom, straight_cbs[0].loss.running_denom, rtol=0, atol=0)
    assert resumed_cbs[2].base_lam == straight_cbs[2].base_lam
    assert resumed_cbs[2].history == straight_cbs[2].history
    assert resumed_cbs[1].last_values == straight_cbs[1].last_values


# --- YAML configs through LightningCLI -------------------------------------------------------------------------------
YAMLS = sorted(p for p in glob.glob(str(ROOT / "callbacks" / "*.yaml"))
               if not Path(p).stem.startswith("modality"))  # those need a multimodal model: test_modality.py


def test_there_are_yaml_configs():
    names = {Path(p).stem for p in YAMLS}
    assert {"demographic_parity", "equalized_odds", "ccdcov_multitype", "monitor_only", "lambda_schedule"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=[Path(p).stem for p in YAMLS])
def test_yaml_config_runs_with_lightning_cli(path, tmp_path):
    from fairret.lightning.cli import cli_main

    args = ["fit", "--config", path, "--data.dataset=synthetic", "--data.n_synthetic=300", "--data.batch_size=64",
            "--trainer.max_epochs=2", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    cli = cli_main(args)
    kinds = {type(c).__name__ for c in cli.trainer.callbacks}
    assert "FairnessMonitor" in kinds
    assert cli.trainer.global_step > 0
    m = cli.trainer.callback_metrics
    assert "val/fairness/dp_relative_gap" in m
    if "FairnessRegularizer" in kinds:
        assert "train/fairness/penalty_step" in m or "train/fairness/penalty" in m


def test_callbacks_append_on_the_command_line(tmp_path):
    from fairret.lightning.cli import cli_main

    cli = cli_main(["fit", "--data.dataset=synthetic", "--data.n_synthetic=200", "--trainer.max_epochs=1",
                    "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                    "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.callbacks+=fairret.lightning.FairnessMonitor", "--trainer.callbacks.sens=sens",
                    "--trainer.callbacks.labels=y"])
    assert "val/fairness/eo_relative_gap" in cli.trainer.callback_metrics


# --- bad configuration ------------------------------------------------------------------------------------------------
def test_unknown_submodule_fails_at_setup_naming_it():
    reg = FairnessRegularizer(NormLoss(PositiveRate()), sens="sens", prediction_module="encoder")
    with pytest.raises(ValueError, match=r"`prediction_module`='encoder' names no submodule of Net.*'net'"):
        trainer(callbacks=[reg], max_steps=1).fit(Net(), loader())


def test_missing_batch_key_fails_before_the_forward():
    calls = []

    class Counting(Net):
        def forward(self, x):
            calls.append("forward")
            return super().forward(x)

    class FitStart(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            calls.append("fit_start")

    reg = FairnessRegularizer(NormLoss(PositiveRate()), sens="group")
    with pytest.raises(ValueError, match=r"Argument `sens` selects key 'group', but the batch has keys"):
        trainer(callbacks=[reg, FitStart()], max_steps=1).fit(Counting(), loader())
    assert calls == []  # raised at setup: before fit start and before any forward
    # a loader with workers is not read at setup: the same error comes before the first forward
    workers = torch.utils.data.DataLoader(loader().dataset, batch_size=16, num_workers=1)
    with pytest.raises(ValueError, match=r"Argument `sens` selects key 'group'"):
        trainer(callbacks=[FairnessRegularizer(NormLoss(PositiveRate()), sens="group")], max_steps=1).fit(
            Counting(), workers)
    assert "forward" not in calls


def test_non_scalar_penalty_is_an_error():
    def per_sample(pred, sens, pred_as_logit=True):
        return (torch.sigmoid(pred) * sens).sum(1)

    reg = FairnessRegularizer(per_sample, sens="sens")
    with pytest.raises(ValueError, match=r"penalty of argument `loss` \(function\) to be a scalar tensor.*\(16,\)"):
        trainer(callbacks=[reg], max_steps=1).fit(Net(), loader())


def test_static_configuration_errors():
    with pytest.raises(ValueError, match="statistic TruePositiveRate of the loss takes the label: set argument `labels`"):
        FairnessRegularizer(NormLoss(TruePositiveRate()), sens="sens")
    with pytest.raises(ValueError, match="`labels` is set, but the statistic PositiveRate"):
        FairnessRegularizer(NormLoss(PositiveRate()), sens="sens", labels="y")
    with pytest.raises(ValueError, match="`labels` is set, but the loss CCdCovLoss takes no labels"):
        FairnessRegularizer(CCdCovLoss(), sens="sens", labels="y")
    with pytest.raises(ValueError, match="linear-fractional loss NormLoss needs one"):
        FairnessRegularizer(NormLoss(PositiveRate()), sens=["a", "b"])
    with pytest.raises(ValueError, match="`lam` to be a finite number >= 0"):
        FairnessRegularizer(NormLoss(PositiveRate()), lam=-1.0)
    with pytest.raises(TypeError, match="`sens` to be a key"):
        FairnessRegularizer(NormLoss(PositiveRate()), sens=1.5)
    with pytest.raises(ValueError, match="`stages` to hold"):
        FairnessMonitor(stages=["train"])
    with pytest.raises(ValueError, match="`ramp` to be 'linear' or 'cosine'"):
        LambdaSchedule(ramp="exp")
    with pytest.raises(ValueError, match="`target_jsd` to be a finite number > 0"):
        LambdaSchedule(target_jsd=0.0)


def test_manual_optimisation_is_refused():
    class Manual(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="needs automatic optimisation"):
        trainer(callbacks=[FairnessRegularizer(NormLoss(PositiveRate()), sens="sens")], max_steps=1).fit(
            Manual(), loader())


def test_schedule_needs_one_regularizer():
    with pytest.raises(ValueError, match="exactly one FairnessRegularizer"):
        trainer(callbacks=[LambdaSchedule()], max_steps=1).fit(Net(), loader())


def test_target_mode_without_monitor_names_the_metric():
    reg = FairnessRegularizer(NormLoss(PositiveRate()), sens="sens")
    with pytest.raises(ValueError, match="reads `monitor`='val/fairness/jsd', but it was not logged"):
        trainer(callbacks=[reg, LambdaSchedule(target_jsd=0.01)], max_epochs=1).fit(Net(), loader(), loader())


def test_deepcopy_of_callbacks_is_possible():
    copy.deepcopy(FairnessRegularizer(NormLoss(PositiveRate()), sens="sens"))


@pytest.mark.parametrize("which", ["regularizer", "monitor", "schedule"])
def test_fast_dev_run(which):
    reg = FairnessRegularizer(NormLoss(PositiveRate()), lam=0.5, sens="sens")
    cbs = {"regularizer": [reg], "monitor": [FairnessMonitor(sens="sens", labels="y")],
           "schedule": [reg, LambdaSchedule(lam=0.5, ramp_steps=2)]}[which]
    t = pl.Trainer(fast_dev_run=True, accelerator="cpu", devices=1, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=cbs)
    t.fit(Net(), loader(), loader(seed=9))
    assert t.global_step == 1
    if which == "monitor":
        assert "val/fairness/dp_relative_gap" in t.callback_metrics
    else:
        assert reg.last_penalty is not None
        assert reg.lam == 0.5 if which == "regularizer" else reg.lam == 0.25


# --- named keys, summary table, one selection from the CLI (issue 24 item 5) ----------------------------------------
def _hand_table(prob, sens, y):
    """Per-group positive rate, TPR and FPR of probabilities, by direct float64 sums."""
    p, s, y = prob.double().reshape(-1, 1), sens.double(), y.double().reshape(-1, 1)
    return {"pr": ((p * s).sum(0) / s.sum(0)).tolist(),
            "tpr": ((p * y * s).sum(0) / (y * s).sum(0)).tolist(),
            "fpr": ((p * (1 - y) * s).sum(0) / ((1 - y) * s).sum(0)).tolist(), "n": s.sum(0).tolist()}


def test_names_and_summary_in_a_fast_dev_run(capsys):
    dm = TabularDataModule("synthetic", n_synthetic=300, batch_size=400, seed=2)
    torch.manual_seed(0)
    module = TabularClassifier(num_features=6, hidden=(8,))
    mon = FairnessMonitor(sens="sens", labels="y", cells="cells", min_group_size=1)  # "max - min" over every group
    t = pl.Trainer(fast_dev_run=True, accelerator="cpu", devices=1, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[mon])
    t.fit(module, dm)
    names = dm.group_names
    assert names == ["race=A", "race=B", "race=C", "sex=Female", "sex=Male"]
    val = dm.splits["val"].tensors
    with torch.no_grad():
        prob = torch.sigmoid(module(val["x"]))
    ref = _hand_table(prob, val["sens"], val["y"])
    m = t.callback_metrics
    for g, name in enumerate(names):
        for stat, key in (("pr", "dp_relative_gap/pr"), ("tpr", "eo_relative_gap/tpr"),
                          ("fpr", "eo_relative_gap/fpr")):
            assert m[f"val/fairness/{key}/{name}"].item() == pytest.approx(ref[stat][g], rel=1e-5, abs=1e-6)
    assert not any("group_" in k or "stat_" in k for k in m)
    out = capsys.readouterr().out
    assert "Fairness summary (validation)" in out  # printed after fit, for the last validation epoch
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert rows["group"] == ["n", "pr", "tpr", "fpr"]
    for g, name in enumerate(names):
        n, pr, tpr, fpr = rows[name]
        assert int(n) == int(ref["n"][g])
        assert float(pr) == pytest.approx(ref["pr"][g], abs=5e-4)
        assert float(fpr) == pytest.approx(ref["fpr"][g], abs=5e-4)
    assert float(rows["max"][2]) == pytest.approx(max(ref["pr"]) - min(ref["pr"]), abs=1e-3)  # "max - min" row
    assert "jsd" in rows and "dcor" in rows
    # trainer.test prints its own summary, once, from the test epoch
    t.test(module, dm)
    out = capsys.readouterr().out
    assert out.count("Fairness summary (test)") == 1 and "Fairness summary (validation)" not in out
    assert "test/fairness/dp_relative_gap/pr/sex=Male" in t.callback_metrics


def _sensitive_attributes_loader(n=64, seed=9):
    """Dict batches whose "sens" is a SensitiveAttributes slice with one binary attribute (one column in .matrix)."""
    from torch.utils.data import DataLoader

    from fairret.sensitive import SensitiveEncoder

    data = make_data(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    sex = ["F" if v else "M" for v in (torch.rand(n, generator=g) < 0.4).tolist()]
    sa = SensitiveEncoder({"sex": "binary"}).fit_transform({"sex": sex})

    def collate(idx):
        idx = torch.tensor(idx)
        return {"x": data["x"][idx], "y": data["y"][idx], "sens": sa[idx]}

    return DataLoader(list(range(n)), batch_size=16, collate_fn=collate), data, sex


def test_monitor_reads_a_sensitive_attributes_batch_as_its_group_matrix_and_keeps_every_logged_value():
    dl, data, sex = _sensitive_attributes_loader()
    mon = FairnessMonitor(sens="sens", labels="y", min_group_size=1, summary=False)
    module = Net()
    t = trainer(callbacks=[mon])
    t.validate(module, dl)
    with torch.no_grad():
        prob = torch.sigmoid(module(data["x"])).squeeze(1).double()
    m = t.callback_metrics
    assert mon.last_result["validate"].group_names == ["sex=F", "sex=M"]  # both groups, not only sex=M
    for value in ("F", "M"):
        rows = torch.tensor([s == value for s in sex])
        pos = rows & (data["y"] == 1)
        assert m[f"val/fairness/dp_relative_gap/pr/sex={value}"].item() == pytest.approx(prob[rows].mean().item(),
                                                                                      rel=1e-5)
        assert m[f"val/fairness/eo_relative_gap/tpr/sex={value}"].item() == pytest.approx(prob[pos].mean().item(),
                                                                                       rel=1e-5)
    # last_values: the latest value of every key the monitor logged, not only the headline ones
    logged = {k for k in m if k.startswith("val/fairness/")}
    assert len(logged) == 12 and set(mon.last_values) == logged  # dp, eo, eo/tpr, eo/fpr, 6 per group, jsd, dcor
    for k in logged:
        assert mon.last_values[k] == pytest.approx(m[k].item(), rel=1e-6, nan_ok=True)


def test_explicit_group_names_and_no_summary(capsys):
    mon = FairnessMonitor(sens="sens", group_names=["a", "b", "c"], summary=False)
    t = trainer(callbacks=[mon], max_epochs=1)
    t.fit(Net(), loader(), loader(seed=9))
    t.validate(Net(), loader(seed=9))
    assert {f"val/fairness/dp_relative_gap/pr/{g}" for g in "abc"} <= set(t.callback_metrics)
    assert "Fairness summary" not in capsys.readouterr().out
    bad = FairnessMonitor(sens="sens", group_names=["a", "b"])
    with pytest.raises(ValueError, match=r"`group_names` to name the S=3 columns of `sens`, but got 2"):
        trainer(callbacks=[bad], max_epochs=1).validate(Net(), loader(seed=9))
    with pytest.raises(TypeError, match="`group_names` to be a list of strings"):
        FairnessMonitor(group_names="abc")
    with pytest.raises(ValueError, match="`min_group_size` to be an int >= 0"):
        FairnessMonitor(min_group_size=-1)


def test_monitor_warns_on_collapsed_predictions_not_on_valid_ones_nor_in_the_sanity_check():
    import warnings

    from fairret._validation import CollapsedPredictionsWarning

    collapsed = Net()
    with torch.no_grad():
        collapsed.net[-1].weight.mul_(0.1)
        collapsed.net[-1].bias.fill_(-3.0)  # every probability sigmoid(-3): one negative decision for all rows
    mon = FairnessMonitor(sens="sens", labels="y", summary=False)
    with pytest.warns(CollapsedPredictionsWarning, match=r"all 64 rows of this evaluation are predicted negative.*"
                                                         r"lower λ"):
        trainer(callbacks=[mon]).validate(collapsed, loader())
    assert "predicted negative" in mon.last_result["validate"].collapse
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedPredictionsWarning)
        # the same collapsed model in the sanity check only (no training, no validation epoch after it)
        sanity = FairnessMonitor(sens="sens", summary=False)
        trainer(callbacks=[sanity], num_sanity_val_steps=2, max_steps=0, limit_val_batches=2).fit(
            collapsed, loader(), loader(seed=9))
        assert sanity.tracker.metrics is not None and "validate" not in sanity.last_result  # it saw the batches
        valid = Net()  # its untrained logits on these rows have both signs
        mon = FairnessMonitor(sens="sens", labels="y", summary=False)
        trainer(callbacks=[mon]).validate(valid, loader())
        assert mon.last_result["validate"].collapse is None


def test_cli_sets_the_selection_of_every_fairness_callback(tmp_path):
    from fairret.lightning import FairnessCLI
    from fairret.lightning.cli import cli_main

    base = ["--data.dataset=synthetic", "--data.n_synthetic=200", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}", "--config", str(ROOT / "callbacks" / "equalized_odds.yaml")]
    cli = cli_main([*base, "--fairness.sens", "2", "--fairness.labels", "3"], run=False)
    cbs = [c for c in cli.trainer.callbacks if isinstance(c, (FairnessRegularizer, FairnessMonitor))]
    assert len(cbs) == 2
    assert [c.sens for c in cbs] == [2, 2] and [c.labels for c in cbs] == [3, 3]  # integers, on both callbacks
    cli = cli_main(["fit", *base, "--trainer.max_epochs=1", "--fairness.sens", "[sens]", "--fairness.labels", "y",
                    "--fairness.sens", "sens"])
    assert [c.sens for c in cli.trainer.callbacks if isinstance(c, FairnessMonitor)] == ["sens"]
    assert "val/fairness/eo_relative_gap/tpr/sex=Male" in cli.trainer.callback_metrics
    # labels go only where a loss takes them; a wrong selector still names the argument
    reg = FairnessRegularizer(NormLoss(PositiveRate()), sens="sens")
    reg.set_selection(labels="y")
    assert reg.labels is None
    with pytest.raises(ValueError, match="linear-fractional loss NormLoss needs one"):
        reg.set_selection(sens=["a", "b"])
    assert issubclass(FairnessCLI, pl.cli.LightningCLI)
