import math

import pytest

from loretta.tt_shapes import KNOWN_SHAPES, default_tt_shape, resolve_tt_shape, tt_num_params, validate_tt_shape

HIDDEN = [384, 576, 768, 1024, 2048, 2560, 3072, 4096, 5120, 8192, 11008, 14336]
BOTTLENECKS = [8, 16, 32, 64]


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_any_size_gets_a_valid_shape_on_both_sides(hidden, bottleneck):
    for n_in, n_out in ((hidden, bottleneck), (bottleneck, hidden)):
        shape = default_tt_shape(n_in, n_out)
        assert math.prod(shape) == n_in * n_out
        # modes stay in the paper's comfortable range unless a large prime forces otherwise (11008 = 2^8 * 43)
        assert all(2 <= k <= 16 or k == 43 for k in shape), shape


@pytest.mark.parametrize("hidden", HIDDEN)
def test_computed_shapes_split_at_the_in_out_boundary(hidden):
    shape = default_tt_shape(hidden, 64)
    if (hidden, 64) in KNOWN_SHAPES:
        return
    prefix = 1
    for i, k in enumerate(shape):
        prefix *= k
        if prefix == hidden:
            assert math.prod(shape[i + 1 :]) == 64
            return
    pytest.fail(f"{shape} does not split at {hidden}")


@pytest.mark.parametrize(
    "size, shape",
    [
        ((768, 64), (8, 8, 12, 8, 8)),
        ((64, 768), (8, 8, 12, 8, 8)),
        ((4096, 64), (16, 16, 16, 4, 4, 4)),
        ((64, 4096), (4, 4, 4, 16, 16, 16)),
        ((768, 8), (8, 8, 12, 8)),
        ((8, 768), (8, 12, 8, 8)),
        ((768, 16), (8, 8, 12, 4, 4)),
        ((4096, 16), (8, 8, 8, 8, 4, 4)),
        ((4096, 4096), (8,) * 8),
    ],
)
def test_paper_table_10_shapes(size, shape):
    assert default_tt_shape(*size) == shape


def test_rule_alone_reproduces_the_paper_where_the_table_agrees():
    # entries of Table 10 that the general rule finds without the lookup table
    from loretta.tt_shapes import factor_modes

    assert factor_modes(768) + tuple(reversed(factor_modes(64))) == (8, 8, 12, 8, 8)
    assert factor_modes(64) + tuple(reversed(factor_modes(768))) == (8, 8, 12, 8, 8)
    assert factor_modes(4096) + tuple(reversed(factor_modes(16))) == (8, 8, 8, 8, 4, 4)
    assert factor_modes(768) + tuple(reversed(factor_modes(16))) == (8, 8, 12, 4, 4)


@pytest.mark.parametrize(
    "shape, rank, expected",
    [((8, 8, 12, 8, 8), 5, 780), ((8, 8, 12, 12, 8, 8), 5, 1080), ((8, 8, 12, 8), 5, 580), ((8, 8, 8, 4, 9), 5, 585),
     ((16, 16, 8, 4, 4), 8, 1952), ((16, 16, 16, 4, 4, 4), 5, 1100)],
)
def test_core_parameter_counts_from_design(shape, rank, expected):
    assert tt_num_params(shape, rank) == expected


def test_explicit_shape_is_used_and_validated():
    assert resolve_tt_shape(768, 64, {"768x64": [4, 4, 4, 12, 4, 4, 4]}) == (4, 4, 4, 12, 4, 4, 4)
    with pytest.raises(ValueError, match=r"product 48.*768x64"):
        resolve_tt_shape(768, 64, {"768x64": [4, 12]})
    with pytest.raises(ValueError, match="positive integers"):
        validate_tt_shape((8, 0, 8), 8, 8)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_sizes_are_named(bad):
    with pytest.raises(ValueError, match="positive integer"):
        default_tt_shape(bad, 64)
