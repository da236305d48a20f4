"""Sparse backend: selection, the CPU backward shim, and spconv maths against dense torch convolutions."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from xkd_core.models.sparse_backend import (
    conv_algo,
    get_spconv,
    install_cpu_backward_shim,
    set_conv_algo,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _tiny_input(seed: int = 0, shape=(6, 6, 6), n_active: int = 25, channels: int = 2):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(shape[0] * shape[1] * shape[2], generator=g)[:n_active]
    x = flat // (shape[1] * shape[2])
    y = (flat // shape[2]) % shape[1]
    z = flat % shape[2]
    idx = torch.stack([torch.zeros_like(x), x, y, z], 1).int()
    feats = torch.randn(n_active, channels, generator=g)
    return idx, feats


def _to_dense(idx: torch.Tensor, feats: torch.Tensor, shape) -> torch.Tensor:
    dense = torch.zeros(1, feats.shape[1], *shape, dtype=feats.dtype)
    i = idx.long()
    dense[0, :, i[:, 1], i[:, 2], i[:, 3]] = feats.T
    return dense


def _krsc_to_torch(w: torch.Tensor) -> torch.Tensor:
    # spconv 2.x stores (out, k0, k1, k2, in); torch conv3d wants (out, in, k0, k1, k2)
    return w.permute(0, 4, 1, 2, 3).contiguous()


def test_auto_backend_is_spconv_without_cuda():
    sp = get_spconv("auto")
    if not torch.cuda.is_available():
        assert sp.__name__ == "spconv.pytorch"
    assert hasattr(sp, "SubMConv3d") and hasattr(sp, "SparseConvTensor")


def test_unknown_and_missing_backends_are_named():
    with pytest.raises(ValueError, match="sparse backend must be one of"):
        get_spconv("minkowski")  # type: ignore[arg-type]
    if importlib.util.find_spec("spconv_triton") is None:
        with pytest.raises(ImportError, match="spconv_triton"):
            get_spconv("spconv_triton")


def test_shim_is_idempotent_and_returns_zero_without_cuda():
    from spconv.pytorch import ops

    assert install_cpu_backward_shim()
    first = ops.get_current_stream
    assert install_cpu_backward_shim()
    assert ops.get_current_stream is first
    if not torch.cuda.is_available():
        assert ops.get_current_stream() == 0


def test_algo_follows_device():
    sp = get_spconv("spconv")
    assert conv_algo(sp, "cpu") == sp.ConvAlgo.Native
    net = sp.SparseSequential(sp.SubMConv3d(2, 3, 3), torch.nn.ReLU())
    net[0].algo = sp.ConvAlgo.MaskImplicitGemm  # what a CUDA build picks by default
    set_conv_algo(net, sp, "cpu")
    assert net[0].algo == sp.ConvAlgo.Native


def test_subm_and_strided_conv_match_dense_reference_forward_and_backward():
    sp = get_spconv("spconv")
    shape = (6, 6, 6)
    idx, feats = _tiny_input()
    torch.manual_seed(1)
    subm = sp.SubMConv3d(2, 3, 3, padding=1, bias=False, indice_key="s", algo=sp.ConvAlgo.Native)
    down = sp.SparseConv3d(3, 4, 2, stride=2, bias=False, indice_key="d", algo=sp.ConvAlgo.Native)

    f_sparse = feats.clone().requires_grad_(True)
    x = sp.SparseConvTensor(f_sparse, idx, list(shape), 1)
    y1 = subm(x)
    y2 = down(y1.replace_feature(torch.tanh(y1.features)))
    out_sparse = y2.dense()  # (1, 4, 3, 3, 3)
    probe = torch.randn(out_sparse.shape, generator=torch.Generator().manual_seed(2))
    (out_sparse * probe).sum().backward()

    # dense reference: a submanifold conv is a dense conv read only at the active input sites
    w1 = _krsc_to_torch(subm.weight.detach()).requires_grad_(True)
    w2 = _krsc_to_torch(down.weight.detach()).requires_grad_(True)
    f_dense = feats.clone().requires_grad_(True)
    dense_in = _to_dense(idx, f_dense, shape)
    mask = _to_dense(idx, torch.ones(len(idx), 1), shape)
    h = F.conv3d(dense_in, w1, padding=1) * mask
    ref = F.conv3d(torch.tanh(h) * mask, w2, stride=2)
    (ref * probe).sum().backward()

    torch.testing.assert_close(out_sparse, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_sparse.grad, f_dense.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_krsc_to_torch(subm.weight.grad), w1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_krsc_to_torch(down.weight.grad), w2.grad, atol=1e-5, rtol=1e-5)


def test_inverse_conv_returns_to_the_encoder_sites():
    sp = get_spconv("spconv")
    shape = (8, 8, 8)
    idx, feats = _tiny_input(seed=3, shape=shape, n_active=40)
    down = sp.SparseConv3d(2, 3, 2, stride=2, bias=False, indice_key="d1", algo=sp.ConvAlgo.Native)
    up = sp.SparseInverseConv3d(3, 2, 2, bias=False, indice_key="d1", algo=sp.ConvAlgo.Native)
    x = sp.SparseConvTensor(feats, idx, list(shape), 1)
    y = up(down(x))
    assert torch.equal(y.indices, x.indices)
    torch.testing.assert_close(y.features.shape, feats.shape)


def test_auto_takes_spconv_triton_only_for_a_cuda_device(monkeypatch):
    from xkd_core.models import sparse_backend

    monkeypatch.setattr(sparse_backend, "_triton_usable", lambda: True)
    assert sparse_backend.resolve_backend("auto", "cuda:0") == "spconv_triton"
    assert sparse_backend.resolve_backend("auto", "cpu") == "spconv"
    assert sparse_backend.resolve_backend("spconv", "cuda") == "spconv"
    monkeypatch.setattr(sparse_backend, "_triton_usable", lambda: False)
    assert sparse_backend.resolve_backend("auto", "cuda") == "spconv"
    # spconv-triton alone (a GPU-only install): CPU models are still built, with spconv-triton
    monkeypatch.setattr(sparse_backend, "_importable", lambda name: name.startswith("spconv_triton"))
    assert sparse_backend.resolve_backend("auto", "cpu") == "spconv_triton"


def test_for_device_rebuilds_with_the_same_weights_when_the_library_differs(monkeypatch):
    """A CPU-built model whose layers come from another library than the target device's is rebuilt."""
    from xkd_core.models import xmodel_kd
    from xkd_core.models.xmodel_kd import ArchitectureConfig, ModelConfig, XModelKD

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=5, use_camera=False,
                      architecture=ArchitectureConfig(unet_channels=[4, 8, 8], unet_decoder_channels=[4, 8]))
    model = XModelKD(cfg).eval()
    assert model.for_device("cpu") is model  # same library: moved, not rebuilt
    # the device's library differs from the one the layers came from (as spconv -> spconv-triton)
    monkeypatch.setattr(xmodel_kd, "get_spconv", lambda backend, device: object())
    copy = model.for_device("cpu")
    assert copy is not model and copy.cfg is cfg and not copy.training
    ref, new = model.state_dict(), copy.state_dict()
    assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref)


def test_cpu_only_spconv_is_refused_for_cuda_with_a_clear_error(monkeypatch):
    from xkd_core.models import sparse_backend

    monkeypatch.setattr(sparse_backend, "_cpu_only_build", lambda: True)
    with pytest.raises(ImportError, match="CPU-only wheel"):
        sparse_backend.get_spconv("spconv", "cuda")
    assert sparse_backend.get_spconv("spconv", "cpu").__name__ == "spconv.pytorch"


def test_limit_triton_autotune_trims_every_spconv_triton_autotuner(monkeypatch):
    import sys
    import types

    from xkd_core.models import sparse_backend

    class Autotuner:  # stands in for triton.runtime.autotuner.Autotuner (same name, a configs list)
        def __init__(self, n: int) -> None:
            self.configs = list(range(n))

    gemm, other = types.ModuleType("spconv_triton.fake_gemm"), types.ModuleType("elsewhere.kernels")
    gemm.k1, gemm.k2, gemm.one = Autotuner(38), Autotuner(10), Autotuner(1)
    other.k = Autotuner(38)
    monkeypatch.setitem(sys.modules, gemm.__name__, gemm)
    monkeypatch.setitem(sys.modules, other.__name__, other)
    assert sparse_backend.limit_triton_autotune("full") == 0 and len(gemm.k1.configs) == 38
    assert sparse_backend.limit_triton_autotune("3") == 2
    assert (gemm.k1.configs, gemm.k2.configs, gemm.one.configs) == ([0, 1, 2], [0, 1, 2], [0])
    assert len(other.k.configs) == 38  # only spconv-triton's kernels are touched
    with pytest.raises(ValueError, match="XKD_SPCONV_TRITON_AUTOTUNE"):
        sparse_backend.limit_triton_autotune("fast")
