import pytest
import torch

from loretta.tt_linear import INIT_METHODS, TTLinear, tt_to_matrix


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


def _trained(layer: TTLinear) -> TTLinear:
    """Cores moved away from their initial values, a nonzero bias: every term of the map matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return layer


@pytest.mark.parametrize("forward", ["factors", "matrix"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_both_forwards_pass_gradcheck_in_float64(forward, init):
    layer = _trained(TTLinear(12, 6, (3, 4, 6), rank=3, init=init, forward=forward).double())
    names, values = zip(*[(n, p.detach().clone().requires_grad_()) for n, p in layer.named_parameters()])
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)

    def call(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(call, (x, *values))


@pytest.mark.parametrize("n_in, n_out, shape", [(768, 64, (8, 8, 12, 8, 8)), (64, 768, (8, 8, 12, 8, 8)),
                                                (4096, 8, (16, 16, 16, 2, 4))])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_multiplying_by_the_factors_is_the_same_map_as_by_the_matrix(n_in, n_out, shape, init):
    """x @ Lt^T @ R + b against x @ W + b: outputs and every gradient, in fp32."""
    by_factors = _trained(TTLinear(n_in, n_out, shape, rank=5, init=init, forward="factors"))
    by_matrix = TTLinear(n_in, n_out, shape, rank=5, init=init, forward="matrix")
    by_matrix.load_state_dict(by_factors.state_dict())
    assert by_factors.multiplies_by_factors(torch.device("cpu"))
    assert not by_matrix.multiplies_by_factors(torch.device("cpu"))
    x = torch.randn(2, 7, n_in)
    outputs = []
    for layer in (by_factors, by_matrix):
        out = layer(x)
        out.square().sum().backward()
        outputs.append((out, [p.grad for p in layer.parameters()]))
    # fp32 rounding, relative to each tensor's scale (the two sum the same terms in different orders)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())  # noqa: E731
    close(outputs[0][0], outputs[1][0])
    for grad_factors, grad_matrix in zip(outputs[0][1], outputs[1][1]):
        close(grad_factors, grad_matrix)
    left_t, right = by_factors.factors()
    assert left_t.is_contiguous() and left_t.shape[-1] == n_in  # laid out as an nn.Linear weight


def test_noise_reduction_factors_give_exactly_zero_at_step_0():
    layer = TTLinear(768, 64, (8, 8, 12, 8, 8), rank=5, init="noise_reduction", forward="factors")
    assert torch.count_nonzero(layer(torch.randn(4, 768))) == 0


def test_forward_mode_is_validated():
    with pytest.raises(ValueError, match=r"tt_forward 'sparse' is not one of \['auto', 'factors', 'matrix'\]"):
        TTLinear(16, 8, (4, 4, 8), rank=2, forward="sparse")
    # the modes of 6 x 4 as [2, 12] do not split between input and output: no factors to multiply by
    with pytest.raises(ValueError, match=r"tt_forward='factors'.*\[2, 12\] for 6x4"):
        TTLinear(6, 4, (2, 12), rank=2, forward="factors")
    assert not TTLinear(6, 4, (2, 12), rank=2).multiplies_by_factors(torch.device("cpu"))  # auto: the matrix
    # auto takes the factors only where they are fewer multiply-adds: rank 6 on 12 x 10 is not
    assert not TTLinear(12, 10, (3, 4, 5, 2), rank=6).multiplies_by_factors(torch.device("cpu"))
    assert TTLinear(12, 10, (3, 4, 5, 2), rank=2).multiplies_by_factors(torch.device("cpu"))


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


def test_negated_initial_matrix_is_cached_and_exact():
    """LoRETTA_rep's -B0: computed once (the same tensor on each call) until the buffers change."""
    layer = TTLinear(8, 768, (8, 12, 8, 8), rank=5, init="noise_reduction", subtract_initial=False)
    first = layer.negated_initial_matrix()
    assert layer.negated_initial_matrix() is first
    torch.testing.assert_close(first, -tt_to_matrix(layer.initial_cores.tensors(), 8, 768, layer.split), rtol=0, atol=0)
    other = TTLinear(8, 768, (8, 12, 8, 8), rank=5, init="noise_reduction", subtract_initial=False)
    other.negated_initial_matrix()
    other.load_state_dict(layer.state_dict())  # new initial cores: the cache must follow them
    torch.testing.assert_close(other.negated_initial_matrix(), first, rtol=0, atol=0)
