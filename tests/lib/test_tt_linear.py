import pytest
import torch

from loretta.tt_linear import TTLinear, tt_to_matrix


@pytest.mark.parametrize(
    "n_in, n_out, shape",
    [(768, 64, (8, 8, 12, 8, 8)), (4096, 8, (16, 16, 8, 4, 4)), (8, 2304, (8, 8, 8, 4, 9)), (12, 10, (3, 4, 5, 2))],
)
def test_split_and_full_chain_reconstructions_agree(n_in, n_out, shape):
    layer = TTLinear(n_in, n_out, shape, rank=3)
    full = tt_to_matrix(list(layer.cores), n_in, n_out, split=None)
    torch.testing.assert_close(layer.weight_matrix(), full, rtol=1e-5, atol=1e-6)


def test_reconstruction_is_the_row_major_reshape_of_the_tt_tensor():
    layer = TTLinear(6, 4, (2, 3, 4), rank=2)
    g1, g2, g3 = [c.detach() for c in layer.cores]
    tensor = torch.einsum("aib,bjc,ckd->ijk", g1, g2, g3)
    torch.testing.assert_close(layer.weight_matrix(), tensor.reshape(6, 4))


def test_gradcheck_float64():
    layer = TTLinear(12, 6, (3, 4, 6), rank=3).double()
    cores = tuple(c.detach().clone().requires_grad_() for c in layer.cores)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)

    def forward(x, bias, *cores):
        return torch.nn.functional.linear(x, tt_to_matrix(list(cores), 12, 6, layer.split).t(), bias)

    assert torch.autograd.gradcheck(forward, (x, bias, *cores))
    # and the module's own forward is that function
    with torch.no_grad():
        layer.bias.copy_(bias)
        for c, v in zip(layer.cores, cores):
            c.copy_(v)
    torch.testing.assert_close(layer(x), forward(x, bias, *cores))


def test_identity_init_gives_zero_weight_and_gaussian_has_target_scale():
    zero = TTLinear(768, 64, (8, 8, 12, 8, 8), rank=5, init="identity")
    assert torch.count_nonzero(zero.weight_matrix()) == 0
    torch.manual_seed(0)
    stds = [TTLinear(768, 64, (8, 8, 12, 8, 8), rank=5).weight_matrix().std().item() for _ in range(20)]
    target = (1 / (768 + 64)) ** 0.5
    assert 0.5 * target < sum(stds) / len(stds) < 1.5 * target


def test_cores_stay_fp32_and_output_follows_input_dtype():
    layer = TTLinear(16, 8, (4, 4, 8), rank=2)
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert all(c.dtype == torch.float32 for c in layer.cores)


def test_to_dense_linear_computes_the_same_map():
    layer = TTLinear(16, 8, (4, 4, 8), rank=2)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer.to_dense_linear()(x), layer(x))


@pytest.mark.parametrize("rank", [0, -1, 1.5])
def test_bad_rank_is_named(rank):
    with pytest.raises(ValueError, match="tensor_rank"):
        TTLinear(16, 8, (4, 4, 8), rank=rank)


def test_wrong_shape_product_is_named():
    with pytest.raises(ValueError, match=r"\[4, 4, 4\].*16x8"):
        TTLinear(16, 8, (4, 4, 4), rank=2)


def test_noise_reduction_starts_at_zero_and_round_trips_its_initial_cores():
    layer = TTLinear(768, 64, (8, 8, 12, 8, 8), rank=5, init="noise_reduction")
    assert torch.count_nonzero(layer.weight_matrix()) == 0
    assert all(torch.count_nonzero(c) > 0 for c in layer.cores)
    with torch.no_grad():
        layer.cores[2].add_(0.1)
    x = torch.randn(3, 768)
    other = TTLinear(768, 64, (8, 8, 12, 8, 8), rank=5, init="noise_reduction")
    other(x)  # fills its cache, which loading must invalidate
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), layer(x))
    assert any("initial_cores" in k for k in layer.state_dict())
    # the initial product is kept as its two boundary factors, not as a dense 768 x 64 matrix
    assert [tuple(t.shape) for t in layer.initial_cores._cache] == [(768, 5), (5, 64)]
