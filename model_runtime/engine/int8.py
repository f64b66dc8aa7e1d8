"""Dynamic int8 models for CPU serving, stored as plain safetensors.

Every nn.Linear's weight is kept as int8 with a per-output-channel scale (activations are quantized on
the fly at run time: torch's dynamic quantization). The folder holds model.safetensors with, for each
quantized layer, `<layer>.weight_int8` and `<layer>.weight_scale`, and the other parameters in their
own dtype; `model_runtime_int8.json` lists the quantized layers. No pickle is involved either way.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import AutoModelForCausalLM, PreTrainedModel

MARKER = "model_runtime_int8.json"
SCHEME = "dynamic-int8-per-channel"

# torch deprecates its quantized tensor type in favour of torchao, which the CPU wheel here lacks; the
# dynamic int8 kernels are what we use and they still work.
warnings.filterwarnings(
    "ignore", message=r".*quantize_per_(tensor|channel).*deprecated", category=UserWarning
)


def _quantize_linear(layer: torch.nn.Linear) -> DynamicLinear:
    weight = layer.weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    quantized = torch.quantize_per_channel(
        weight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
    )
    module = DynamicLinear(
        layer.in_features, layer.out_features, bias_=layer.bias is not None, dtype=torch.qint8
    )
    module.set_weight_bias(quantized, None if layer.bias is None else layer.bias.detach().float())
    return module


def quantize(model: PreTrainedModel) -> list[str]:
    """Replace every nn.Linear of model (in place) by a dynamic int8 one; return their names."""
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantize_linear(getattr(parent, child)))
    model.config.tie_word_embeddings = False  # the head is now its own int8 copy
    return names


def save(model: PreTrainedModel, names: list[str], folder: Path) -> None:
    """Write the quantized model's tensors (and its config) to folder."""
    tensors: dict[str, torch.Tensor] = {}
    quantized = set(names)
    for name, module in model.named_modules():
        if name in quantized:
            weight = module.weight()
            tensors[f"{name}.weight_int8"] = weight.int_repr().contiguous()
            tensors[f"{name}.weight_scale"] = weight.q_per_channel_scales().float().contiguous()
            if module.bias() is not None:
                tensors[f"{name}.bias"] = module.bias().detach().contiguous()
    skip = tuple(f"{n}." for n in quantized)
    for name, tensor in model.state_dict().items():
        if not name.startswith(skip) and isinstance(tensor, torch.Tensor) and not tensor.is_quantized:
            tensors[name] = tensor.detach().contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt", "quantization": SCHEME})
    model.config.save_pretrained(folder)
    (folder / MARKER).write_text(json.dumps({"scheme": SCHEME, "layers": names}, indent=2) + "\n")


def load(folder: Path, config: object, attention: str) -> PreTrainedModel:
    """Rebuild the model from its config, then put the int8 layers and the other tensors in place."""
    names = json.loads((folder / MARKER).read_text())["layers"]
    tensors = load_file(folder / "model.safetensors")
    # Built for real (not on the meta device) so that computed buffers, like rotary frequencies, exist.
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    layers = {name: (tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.weight_scale").double(),
                     tensors.pop(f"{name}.bias", None)) for name in names}  # fmt: skip
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    expected = {f"{name}.{part}" for name in names for part in ("weight", "bias")}
    missing = [m for m in missing if m not in expected]
    if missing or unexpected:
        raise ValueError(
            f"int8 checkpoint does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, (weight_int8, scale, bias) in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        zero = torch.zeros_like(scale, dtype=torch.long)
        weight = torch._make_per_channel_quantized_tensor(weight_int8, scale, zero, 0)
        module = DynamicLinear(
            weight_int8.shape[1], weight_int8.shape[0], bias_=bias is not None, dtype=torch.qint8
        )
        module.set_weight_bias(weight, bias)
        setattr(parent, child, module)
    return model.eval()
