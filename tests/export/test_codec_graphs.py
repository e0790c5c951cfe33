"""Static codec graphs: torch equals the codec, ONNX (opset 20) exports clean and matches ORT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample

from aimg.export.codec_graphs import (
    GRAPH_KEYS,
    FrameEncoder,
    SegmentDecoder,
    VideoEncoder,
    codec_example_inputs,
    codec_modules,
)
from aimg.model.codecs import LatentCodec, PixelCodec, WanVAECodec

FRAMES = 5
BAD_DTYPES = {onnx.TensorProto.DOUBLE, onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def tiny_wan22() -> WanVAECodec:
    """Random Wan2.2-structured VAE: residual blocks, patch size 2, 16x spatial, 4x temporal."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=16,
        decoder_base_dim=24,
        z_dim=8,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i - 0.3 for i in range(8)],
        latents_std=[0.5 + 0.25 * i for i in range(8)],
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
    )
    return WanVAECodec(vae)


def tiny_wan21() -> WanVAECodec:
    """Random Wan2.1-structured VAE: plain blocks, no patching, 8x spatial, 4x temporal."""
    torch.manual_seed(1)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.0, 4.0],
    )
    return WanVAECodec(vae)


CODECS = {
    "pixel-s8-t1": (lambda: PixelCodec(8, 1), 32),
    "pixel-s8-t4": (lambda: PixelCodec(8, 4), 32),
    "wan2.2": (tiny_wan22, 64),
    "wan2.1": (tiny_wan21, 32),
}


@pytest.fixture(scope="module")
def codecs() -> dict[str, LatentCodec]:
    return {name: make() for name, (make, _) in CODECS.items()}


def reference(codec: LatentCodec, key: str, x: torch.Tensor) -> torch.Tensor:
    """What each graph must compute, through the codec's own encode/decode."""
    if key == "frame_encoder":
        return codec.encode(x[:, :, None])[:, :, 0]
    return codec.encode(x) if key == "video_encoder" else codec.decode(x)


def export(module: torch.nn.Module, args: tuple, opset: int = 20) -> onnx.ModelProto:
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=list(module.input_names),
        output_names=list(module.output_names),
        verbose=False,
    )
    return program.model_proto


def check_graph(model: onnx.ModelProto) -> Counter:
    """Assert a static, standard-op, float32-only graph without ScatterND; op_type histogram."""
    onnx.checker.check_model(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    assert not model.functions
    ops = Counter(node.op_type for node in graph.node)
    assert "ScatterND" not in ops and "GatherND" not in ops, ops
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    values = [*graph.input, *graph.output, *graph.value_info]
    dtypes = {v.type.tensor_type.elem_type for v in values}
    dtypes |= {t.data_type for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to":
                dtypes.add(attr.i)
            if attr.type == onnx.AttributeProto.TENSOR:
                dtypes.add(attr.t.data_type)
    assert not dtypes & BAD_DTYPES, dtypes
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{value.name} is not static"
    return ops


@pytest.mark.parametrize("name", CODECS)
def test_modules_equal_the_codec(codecs, name):
    codec, size = codecs[name], CODECS[name][1]
    for frames in (FRAMES, 9):
        modules = codec_modules(codec, frames, codec.latent_frames(frames))
        inputs = codec_example_inputs(modules, views=2, height=size, width=size, seed=frames)
        for key, module in modules.items():
            (x,) = inputs[key]
            with torch.no_grad():
                out = module(x)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, reference(codec, key, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", GRAPH_KEYS)
@pytest.mark.parametrize("name", CODECS)
def test_graph_exports_at_opset_20_and_matches_onnxruntime(codecs, name, key):
    codec, size = codecs[name], CODECS[name][1]
    module = codec_modules(codec, FRAMES, codec.latent_frames(FRAMES))[key]
    (x,) = module.example_inputs(2, size, size, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(x).numpy()
    model = export(module, (x,))
    ops = check_graph(model)
    assert ops
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {module.input_names[0]: x.numpy()})
    assert out.shape == expected.shape == tuple(reference(codec, key, x).shape)
    err = np.abs(out - expected).max()
    assert err <= 1e-5 * max(1.0, np.abs(expected).max()), f"max abs {err:.2e}"


def test_wan_frame_encoder_exports_at_opset_23(codecs):
    module = FrameEncoder(codecs["wan2.2"])
    (x,) = module.example_inputs(1, 64, 64)
    check_graph(export(module, (x,), opset=23))


def test_decoder_leaves_the_vae_unchanged(codecs):
    codec = codecs["wan2.2"]
    decoder = SegmentDecoder(codec, 2)
    with torch.no_grad():
        decoder(*decoder.example_inputs(1, 64, 64))
    layers = [m for m in codec.vae.modules() if isinstance(m, WanUpsample)]
    assert layers and all("forward" not in vars(m) for m in layers)
    assert all(cached is None for cached in getattr(codec.vae, "_feat_map", []))
    assert set(dict(decoder.named_parameters())) == {
        f"vae.{n}" for n, _ in codec.vae.named_parameters()
    }


def test_modules_check_their_fixed_lengths():
    codec = PixelCodec(8, 4)
    modules = codec_modules(codec, 9, 2)
    assert list(modules) == list(GRAPH_KEYS)
    assert (modules["video_encoder"].latent_frames, modules["action_decoder"].num_frames) == (3, 5)
    shapes = {k: v[0].shape for k, v in codec_example_inputs(modules, 3, 16, 24).items()}
    assert shapes == {
        "frame_encoder": (3, 3, 16, 24),
        "video_encoder": (3, 3, 9, 16, 24),
        "action_decoder": (3, 768, 2, 2, 3),
    }
    with pytest.raises(ValueError, match="1 \\+ k\\*4"):
        VideoEncoder(codec, 6)
    with pytest.raises(ValueError, match="video must be"):
        modules["video_encoder"](torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="latents must be"):
        modules["action_decoder"](torch.zeros(1, 768, 3, 2, 2))
