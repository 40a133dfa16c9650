from fairret import demo


def test_demo_quick_path(data_dir, capsys):
    results = demo.main(["--data-dir", str(data_dir), "--epochs", "3", "--subsample", "1200"])
    out = capsys.readouterr().out
    assert "baseline (BCE only)" in out and "DP race" in out
    base = results["baseline (BCE only)"]
    assert 50 < base["acc"] < 80
    dp = next(v for k, v in results.items() if k.startswith("NormLoss(PositiveRate)"))
    assert set(dp) == set(base)
