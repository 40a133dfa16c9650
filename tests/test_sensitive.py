import numpy as np
import pytest
import torch

from fairret.sensitive import SensitiveEncoder, one_hot_groups


def test_blocks_weights_and_intersections():
    cols = {"race": np.array(["a", "b", "a", "c", "b"]), "sex": np.array(["F", "M", "M", "F", "F"]),
            "age": np.array([20.0, 40.0, 30.0, 60.0, 20.0])}
    enc = SensitiveEncoder({"race": "categorical", "sex": "binary", "age": "continuous"},
                           intersections=[("race", "sex")], weights={"sex": 2.0, "race&sex": 0.5})
    s = enc.fit_transform(cols)
    assert [b.name for b in s.blocks] == ["race", "sex", "age", "race&sex"]
    torch.testing.assert_close(s.columns_of("race"), one_hot_groups(torch.tensor([0, 1, 0, 2, 1]), 3))
    torch.testing.assert_close(s.columns_of("sex")[:, 0], torch.tensor([0., 2., 2., 0., 0.]))
    torch.testing.assert_close(s.columns_of("age")[:, 0], torch.tensor([0., 0.5, 0.25, 1.0, 0.]))
    # cells seen: (a,F) (a,M) (b,F) (b,M) (c,F); (c,M) is empty and dropped
    assert s.dropped_cells == {"race&sex": 1}
    assert s.group_ids["race&sex"].tolist() == [0, 3, 1, 4, 2]
    assert s.columns_of("race&sex").sum(1).tolist() == [0.5] * 5
    assert s.block("race&sex").categories[4] == ("c", "F")


def test_transform_unseen_values_and_scaling():
    enc = SensitiveEncoder({"g": "categorical", "x": "continuous"}, continuous_scaling="standard")
    enc.fit({"g": ["u", "v"], "x": [1.0, 3.0]})
    s = enc.transform({"g": ["v", "w"], "x": [2.0, 5.0]})
    assert s.group_ids["g"].tolist() == [1, -1]
    assert s.matrix[1, :2].tolist() == [0.0, 0.0]
    assert s.columns_of("x")[:, 0].tolist() == pytest.approx([0.0, 3.0])


def test_errors():
    with pytest.raises(ValueError, match=r"Expected the kind of attribute `a` to be one of"):
        SensitiveEncoder({"a": "ordinal"})
    with pytest.raises(ValueError, match=r"only binary and categorical attributes can be intersected"):
        SensitiveEncoder({"a": "categorical", "b": "continuous"}, intersections=[("a", "b")])
    with pytest.raises(ValueError, match=r"Expected binary attribute `b` to have exactly 2 values, but got 3"):
        SensitiveEncoder({"b": "binary"}).fit({"b": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"Expected columns for the sensitive attributes \['b'\]"):
        SensitiveEncoder({"a": "categorical", "b": "binary"}).fit({"a": [1, 2]})
    with pytest.raises(ValueError, match=r"Argument `weights` names `z`"):
        SensitiveEncoder({"a": "categorical"}, weights={"z": 1.0})
    with pytest.raises(RuntimeError, match=r"transform called before fit"):
        SensitiveEncoder({"a": "categorical"}).transform({"a": [1]})
