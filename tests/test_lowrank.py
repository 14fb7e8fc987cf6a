import pytest
import torch
from peftlab import lowrank
from peftlab.adapters import efficiency_table


def test_truncated_svd_error_is_eckart_young():
    M = lowrank.low_rank_plus_noise(40, 30, true_rank=3, noise=0.05)
    S = torch.linalg.svdvals(M)
    for k, err in lowrank.relative_errors(M, [1, 3, 10]).items():
        expected = (S[k:].pow(2).sum().sqrt() / S.pow(2).sum().sqrt()).item()
        assert err == pytest.approx(expected, rel=1e-4)
    assert torch.linalg.matrix_rank(lowrank.rank_k_approximation(M, 3)) == 3


def test_error_collapses_at_the_true_rank():
    errs = lowrank.relative_errors(lowrank.low_rank_plus_noise(64, 64, true_rank=4, noise=0.001), [3, 4, 8])
    assert errs[3] > 10 * errs[4] and errs[8] <= errs[4]


def test_rank_out_of_range():
    with pytest.raises(ValueError, match="k=0"):
        lowrank.rank_k_approximation(torch.ones(3, 3), 0)


def test_efficiency_table_for_qwen25_3b():
    rows = efficiency_table("Qwen/Qwen2.5-3B-Instruct", ranks=(4, 16), target_sets={"q,v": ["q_proj", "v_proj"]})
    assert rows[0]["trainable"] == 3_085_938_688
    assert [(r["r"], r["trainable"]) for r in rows[1:]] == [(4, 921_600), (16, 3_686_400)]
