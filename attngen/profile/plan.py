"""plan.json (DESIGN §7): a pattern per layer of a model, read and written.

    plan = read_plan("plan.json")          # also a dict, or a ModelPlan (returned as is)
    plan.layers[3]                         # the Pattern of layer 3 (a heads { … } mixture)
    write_plan(plan, "plan.json")

Only `layers[*].layer` and `layers[*].pattern` are needed to apply a plan; everything else
(per-head scores, densities, validation) is carried along unchanged in `meta`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import attngen
from attngen.ir.pattern import Pattern


@dataclass(frozen=True)
class ModelPlan:
    layers: dict[int, Pattern]  # layer index → pattern; a missing layer stays dense
    meta: dict = field(default_factory=dict)  # the rest of plan.json, including per-head rows
    layer_rows: dict[int, dict] = field(default_factory=dict)  # extra fields of each layer

    def pattern(self, layer: int) -> Pattern | None:
        return self.layers.get(layer)


def read_plan(source: str | Path | dict | ModelPlan) -> ModelPlan:
    """A plan from a path to plan.json, its parsed dict, or a ModelPlan."""
    if isinstance(source, ModelPlan):
        return source
    if isinstance(source, str | Path):
        source = json.loads(Path(source).read_text())
    if not isinstance(source, dict) or not isinstance(source.get("layers", []), list):
        raise ValueError("a plan is a dict with a list of {'layer': i, 'pattern': text} under "
                         "'layers' (DESIGN §7)")
    layers, rows = {}, {}
    for row in source.get("layers", []):
        if not isinstance(row, dict) or "layer" not in row or "pattern" not in row:
            raise ValueError(f"plan layer entries need 'layer' and 'pattern', got {row!r}")
        index = int(row["layer"])
        if index in layers:
            raise ValueError(f"layer {index} appears twice in the plan")
        layers[index] = attngen.parse(row["pattern"])
        rows[index] = {k: v for k, v in row.items() if k not in ("layer", "pattern")}
    meta = {k: v for k, v in source.items() if k != "layers"}
    return ModelPlan(layers, meta, rows)


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
