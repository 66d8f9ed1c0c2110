"""plan.json (DESIGN §7): a pattern per layer of a model, read and written.

    plan = read_plan("plan.json")          # also a dict, or a ModelPlan (returned as is)
    plan.layers[3]                         # the Pattern of layer 3 (a heads { … } mixture)
    write_plan(plan, "plan.json")

Only `layers[*].layer` and `layers[*].pattern` are needed to apply a plan; everything else
(per-head scores, densities, validation) is carried along unchanged in `meta`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import attngen
from attngen.dsl import load_text
from attngen.errors import PatternError
from attngen.ir.pattern import Pattern


@dataclass(frozen=True)
class ModelPlan:
    layers: dict[int, Pattern]  # layer index → pattern; a missing layer stays dense
    meta: dict = field(default_factory=dict)  # the rest of plan.json, including per-head rows
    layer_rows: dict[int, dict] = field(default_factory=dict)  # extra fields of each layer

    def pattern(self, layer: int) -> Pattern | None:
        return self.layers.get(layer)


# The fields of plan.json and their types (DESIGN §7). Everything else is carried in `meta`.
_TOP_FIELDS = {"version": int, "model": str, "attngen_version": str, "num_layers": int,
               "num_heads": int, "num_kv_heads": int, "layers": list}
_LAYER_FIELDS = {"layer": int, "pattern": str, "heads": list}


def _typed(value, kind: type) -> bool:
    """JSON type check: bool is not an int, and a float with a fraction is not an int."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_fields(row: dict, fields: dict, where: str) -> None:
    for name, kind in fields.items():
        if name in row and not _typed(row[name], kind):
            raise ValueError(f"{where}: '{name}' must be {_TYPE_NAMES[kind]}, got "
                             f"{json.dumps(row[name])[:60]}")
        if kind is int and name in row and row[name] < 0:
            raise ValueError(f"{where}: '{name}' must be at least 0, got {row[name]}")


_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list"}


def read_plan(source: str | Path | dict | ModelPlan) -> ModelPlan:
    """A plan from a path to plan.json, its parsed dict, or a ModelPlan. The file is checked
    against the fields above; a layer's pattern text is parsed with errors that name the
    layer (`plan.json layer 3:1:9: error: …`)."""
    if isinstance(source, ModelPlan):
        return source
    name = "plan"
    if isinstance(source, str | Path):
        name = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"no plan file {source}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the plan {source}: {e}") from None
        try:
            source = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(source, dict):
        raise ValueError(f"{name}: a plan is a JSON object with a list of "
                         "{'layer': i, 'pattern': text} under 'layers' (DESIGN §7), got "
                         f"{type(source).__name__}")
    if not source and name == "plan":  # `{}` in code: no layer planned (the profiler's own)
        return ModelPlan({})
    if "layers" not in source:
        raise ValueError(f"{name} has no 'layers': a plan lists {{'layer': i, 'pattern': text}}"
                         " per layer (DESIGN §7)")
    _check_fields(source, _TOP_FIELDS, name)
    layers, rows = {}, {}
    for i, row in enumerate(source["layers"]):
        where = f"{name}: layers[{i}]"
        if not isinstance(row, dict) or "layer" not in row or "pattern" not in row:
            raise ValueError(f"{where}: a layer entry needs 'layer' and 'pattern', got "
                             f"{json.dumps(row)[:80]}")
        _check_fields(row, _LAYER_FIELDS, where)
        index = row["layer"]
        if index in layers:
            raise ValueError(f"{where}: layer {index} appears twice in the plan")
        layers[index] = load_text(row["pattern"], file=f"{name} layer {index}")
        rows[index] = {k: v for k, v in row.items() if k not in ("layer", "pattern")}
    meta = {k: v for k, v in source.items() if k != "layers"}
    return ModelPlan(layers, meta, rows)


def expand_template(data: dict, layers: int) -> dict:
    """A plan template (`"every_layer": PATTERN` instead of a `layers` list, as the bundled
    patterns/plans/*.json) as the plan of a model with `layers` layers."""
    if data.get("layers"):
        raise ValueError("a plan template has `every_layer` or `layers`, not both")
    return {k: v for k, v in data.items() if k != "every_layer"} | {
        "layers": [{"layer": i, "pattern": data["every_layer"]} for i in range(layers)],
        "expanded_from": "every_layer"}


def check_plan(plan: str | Path | dict | ModelPlan, config, model_id: str | None = None
               ) -> ModelPlan:
    """The plan, read and checked against the model it is applied to; ValueError if it was
    made for another model. `config` is the model's config (an HF PretrainedConfig or a dict
    with num_hidden_layers, num_attention_heads and optionally num_key_value_heads);
    `model_id` defaults to its name_or_path. Checked: the model name (when both are known),
    the layer count, and each layer's head count and heads { … } ranges."""
    def get(key: str):
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    layers, heads = get("num_hidden_layers"), get("num_attention_heads")
    if isinstance(plan, str | Path) and Path(plan).is_file():
        data = json.loads(Path(plan).read_text(encoding="utf-8"))
        if isinstance(data, dict) and "every_layer" in data:
            plan = data
    if isinstance(plan, dict) and "every_layer" in plan and _typed(layers, int):
        plan = expand_template(plan, layers)
    plan = read_plan(plan)
    kv_heads = get("num_key_value_heads") or heads
    if not (_typed(layers, int) and _typed(heads, int)):
        raise TypeError("check_plan needs the model config's num_hidden_layers and "
                        "num_attention_heads")
    model_id = model_id or get("name_or_path") or get("_name_or_path") or ""
    planned = plan.meta.get("model") or ""
    if planned and model_id and _model_key(planned) != _model_key(str(model_id)):
        raise ValueError(f"the plan was made for model `{planned}`, not `{model_id}`")
    for key, actual in (("num_layers", layers), ("num_heads", heads),
                        ("num_kv_heads", kv_heads)):
        if key in plan.meta and plan.meta[key] != actual:
            raise ValueError(f"the plan is for {plan.meta[key]} {key[4:].replace('_', ' ')}, "
                             f"the model has {actual}")
    beyond = sorted(i for i in plan.layers if i >= layers)
    if beyond:
        raise ValueError(f"the plan names layers {beyond}; the model has {layers} "
                         f"(0..{layers - 1})")
    for i, pattern in sorted(plan.layers.items()):
        per_head = plan.layer_rows.get(i, {}).get("heads")
        if per_head is not None and len(per_head) != heads:
            raise ValueError(f"plan layer {i} lists {len(per_head)} heads, the model has "
                             f"{heads}")
        try:
            pattern.head_nodes(heads, kv_heads)
        except PatternError as e:
            raise PatternError(f"plan layer {i}: {e.message}", e.span, e.hint) from None
    return plan


def _model_key(name: str) -> str:
    """A model name without its folder and a quantisation suffix: `…/SmolLM2-135M-Instruct`
    and `SmolLM2-135M-Instruct.Q4_1` are the same model."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return re.sub(r"\.(q\d\w*|f16|f32|bf16|fp16|gguf)$", "", base)


def plan_to_dict(plan: ModelPlan) -> dict:
    layers = [{"layer": i, "pattern": str(plan.layers[i]), **plan.layer_rows.get(i, {})}
              for i in sorted(plan.layers)]
    return {**plan.meta, "layers": layers}


def write_plan(plan: ModelPlan, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan_to_dict(plan), indent=1) + "\n")
    return path


def uniform_plan(pattern: Pattern | str, layers: int, **meta) -> ModelPlan:
    """The same pattern on every layer and head (dense, StreamingLLM and MoA baselines)."""
    pattern = attngen.parse(pattern) if isinstance(pattern, str) else pattern
    return ModelPlan({i: pattern for i in range(layers)}, dict(meta))
